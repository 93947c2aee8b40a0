"""The training curves of a run's ``history.csv``: both phases, train against validation."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ham_utils.figures.base import PathLike, finish, new_figure

_CURVE_PANELS = (
    ("loss", "Loss"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("learning_rate", "Learning rate"),
)


def _has(history: pd.DataFrame, column: str) -> bool:
    return column in history and history[column].notna().any()


def _mark_phases(ax: Axes, history: pd.DataFrame, label: bool) -> None:
    """Shade the fine-tuning epochs; a line where they start after a frozen phase."""
    if "phase" not in history or not (history["phase"] == 2).any():
        return
    epochs = history["epoch"]
    start = epochs[history["phase"] == 2].min() - 0.5
    ax.axvspan(
        start,
        epochs.max() + 0.5,
        color="tab:orange",
        alpha=0.08,
        label="phase 2: fine-tuning" if label else None,
    )
    if (history["phase"] == 1).any():
        ax.axvline(start, color="tab:orange", linestyle="--", linewidth=1)


def _plot_metric(ax: Axes, history: pd.DataFrame, name: str) -> bool:
    """Train (solid) and validation (dashed) curves of one metric; False if neither exists."""
    if name == "learning_rate":
        if not _has(history, name):
            return False
        ax.plot(history["epoch"], history[name], marker=".")
        if (history[name] > 0).all():
            ax.set_yscale("log")
        return True
    drawn = False
    for column, style, label in ((name, "-", "train"), (f"val_{name}", "--", "validation")):
        if _has(history, column):
            ax.plot(history["epoch"], history[column], style, marker=".", label=label)
            drawn = True
    return drawn


def plot_training_curves(history: pd.DataFrame, path: PathLike = None) -> Figure:
    """Loss, balanced accuracy, macro F1 and learning rate per epoch, train vs validation.

    Reads a run's ``history.csv``; missing columns are skipped. The fine-tuning phase is
    shaded and the best epoch by ``val_balanced_accuracy`` (when logged) is marked.
    """
    # history.csv counts epochs from 0 (Keras); people, the app and the model card from 1.
    history = history.sort_values("epoch").reset_index(drop=True)
    history = history.assign(epoch=history["epoch"] + 1)
    fig, axes = new_figure(2, 2, figsize=(11, 7), sharex=True)
    best = None
    if _has(history, "val_balanced_accuracy"):
        best = history.loc[history["val_balanced_accuracy"].idxmax()]
    for ax, (name, title) in zip(axes.flat, _CURVE_PANELS, strict=True):
        first = ax is axes.flat[0]
        _mark_phases(ax, history, label=first)
        if not _plot_metric(ax, history, name):
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        if best is not None:
            ax.axvline(
                best["epoch"],
                color="tab:green",
                linestyle=":",
                linewidth=1.2,
                label=f"best epoch {int(best['epoch'])}" if first else None,
            )
            if name == "balanced_accuracy":
                ax.plot(
                    best["epoch"],
                    best["val_balanced_accuracy"],
                    "*",
                    color="tab:green",
                    markersize=12,
                    label=f"best {best['val_balanced_accuracy']:.3f}",
                )
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return finish(fig, path)
