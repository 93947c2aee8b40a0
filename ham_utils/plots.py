"""Figures for training curves, evaluation and EDA.

Every function builds a :class:`matplotlib.figure.Figure` directly, without pyplot: no global
figure state, no GUI backend needed (headless, threads, tests), and nothing to close. Given
``path`` it also writes a PNG there. A plain ``Figure`` does not render as a Jupyter cell's
result unless pyplot's inline backend happens to be active, and one from ``pyplot.subplots``
renders twice; :class:`NotebookFigure` renders exactly once either way.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ham_utils.config import CLASSES
from ham_utils.scoring import ECE_BINS, expected_calibration_error, reliability_table

DPI = 120
PathLike = str | os.PathLike[str] | None


class NotebookFigure(Figure):
    """A Figure that shows itself as a PNG when it is the last expression of a Jupyter cell."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def _figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure and its axes as a 2-D array."""
    fig = NotebookFigure(figsize=kwargs.pop("figsize", (6.4, 4.8)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _finish(fig: Figure, path: PathLike) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


# --- training curves -----------------------------------------------------------------------

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
    history = history.sort_values("epoch").reset_index(drop=True)
    fig, axes = _figure(2, 2, figsize=(11, 7), sharex=True)
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
    return _finish(fig, path)


# --- evaluation ----------------------------------------------------------------------------


def _annotate_matrix(ax: Axes, values: np.ndarray, fmt: str) -> None:
    finite = values[np.isfinite(values)]
    cutoff = finite.max() / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(values):
        text = format(v, fmt) if np.isfinite(v) else "–"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize="small",
            color="white" if np.isfinite(v) and v > cutoff else "black",
        )


def plot_confusion_matrices(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str] = CLASSES,
    path: PathLike = None,
) -> Figure:
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    counts = np.asarray(cm, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = counts / totals  # rows of absent classes stay NaN, shown as "–"
    fig, axes = _figure(1, 2, figsize=(13, 5.5))
    panels = ((counts, "Counts", ".0f", None), (normalised, "Row-normalised (recall)", ".2f", 1))
    for ax, (values, title, fmt, vmax) in zip(axes[0], panels, strict=True):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        _annotate_matrix(ax, values, fmt)
        ticks = np.arange(len(classes))
        ax.set_xticks(ticks, classes, rotation=45, ha="right")
        ax.set_yticks(ticks, classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _finish(fig, path)


def _one_vs_rest_axes(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], curve: str
) -> tuple[Figure, Axes]:
    """One curve per class ("roc" or "pr"); classes lacking positives or negatives are noted."""
    y_true, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(probs, dtype=float)
    fig, axes = _figure(figsize=(7, 6))
    ax = axes[0, 0]
    for k, name in enumerate(classes):
        positive = y_true == k
        if curve == "roc" and positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, probs[:, k])
            auc = roc_auc_score(positive, probs[:, k])
            ax.plot(fpr, tpr, color=f"C{k}", label=f"{name} (AUC {auc:.3f})")
        elif curve == "pr" and positive.any():
            precision, recall, _ = precision_recall_curve(positive, probs[:, k])
            ap = average_precision_score(positive, probs[:, k])
            ax.step(recall, precision, where="post", color=f"C{k}", label=f"{name} (AP {ap:.3f})")
        else:
            reason = "no positives" if not positive.any() else "no negatives"
            ax.plot([], [], color=f"C{k}", linestyle=":", label=f"{name}: {reason}, skipped")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return fig, ax


ROC_BAND_GRID = np.linspace(0.0, 1.0, 101)  # false positive rates where a ROC band is drawn


def plot_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str] = CLASSES,
    path: PathLike = None,
    bands: np.ndarray | None = None,
) -> Figure:
    """One-vs-rest ROC curve per class with its AUC in the legend; with ``bands`` (from
    :func:`ham_utils.bootstrap.roc_bands` on :data:`ROC_BAND_GRID`), each curve's pointwise
    95% bootstrap band shaded in its colour."""
    fig, ax = _one_vs_rest_axes(y_true, probs, classes, "roc")
    if bands is not None:
        for k in range(len(classes)):
            if np.isfinite(bands[k]).all():
                low, high = bands[k].T
                ax.fill_between(ROC_BAND_GRID, low, high, color=f"C{k}", alpha=0.12, lw=0)
        ax.fill_between([], [], [], color="grey", alpha=0.3, label="95% bootstrap bands")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize="small")
    return _finish(fig, path)


def plot_pr_curves(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str] = CLASSES, path: PathLike = None
) -> Figure:
    """One-vs-rest precision-recall curve per class with its average precision in the legend."""
    fig, ax = _one_vs_rest_axes(y_true, probs, classes, "pr")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall, one class vs the rest")
    ax.legend(loc="lower left", fontsize="small")
    return _finish(fig, path)


def plot_reliability(
    y_true: np.ndarray,
    probs: np.ndarray,
    bins: int = ECE_BINS,
    path: PathLike = None,
    bands: np.ndarray | None = None,
) -> Figure:
    """Reliability diagram of the top-class confidence, with the images per bin below; with
    ``bands`` (from :func:`ham_utils.bootstrap.reliability_bands`), each bin's 95% bootstrap
    interval of the accuracy as an error bar."""
    table = reliability_table(y_true, probs, bins)
    ece = expected_calibration_error(y_true, probs, bins)
    centres, width = (table["lower"] + table["upper"]) / 2, 1 / bins
    fig, axes = _figure(2, 1, figsize=(6, 7), sharex=True, height_ratios=(3, 1))
    top, bottom = axes[:, 0]
    top.bar(centres, table["accuracy"].fillna(0), width=width, edgecolor="black", label="accuracy")
    top.bar(
        centres,
        table["confidence"] - table["accuracy"],
        bottom=table["accuracy"],
        width=width,
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    if bands is not None:
        shown = np.isfinite(bands).all(axis=1) & (table["count"].to_numpy() > 0)
        accuracy = table["accuracy"].to_numpy()
        top.errorbar(
            centres[shown],
            accuracy[shown],
            yerr=np.abs(bands[shown].T - accuracy[shown]),
            fmt="none",
            ecolor="black",
            capsize=2,
            label="95% bootstrap interval",
        )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability (ECE {ece:.3f}, {bins} bins)")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, table["count"], width=width, edgecolor="black", color="tab:grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("top-class confidence")
    bottom.set_ylabel("images")
    return _finish(fig, path)


def plot_risk_coverage(y_true: np.ndarray, probs: np.ndarray, path: PathLike = None) -> Figure:
    """Selective prediction: accuracy and balanced accuracy of the most confident cases as
    the least confident are set aside, with the 80% and 90% coverage marked."""
    from ham_utils.scoring import SELECTIVE_COVERAGES, risk_coverage

    curve = risk_coverage(y_true, probs)
    fig, axes = _figure(figsize=(7, 4.5))
    ax = axes[0, 0]
    ax.plot(curve["coverage"], curve["accuracy"], label="accuracy")
    ax.plot(curve["coverage"], curve["balanced_accuracy"], label="balanced accuracy")
    for coverage in SELECTIVE_COVERAGES:
        ax.axvline(coverage, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of cases the model keeps, most confident first)")
    ax.set_ylabel("score on the kept cases")
    ax.set_title("Risk-coverage: how much better the model is on the cases it is sure of")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _finish(fig, path)


def plot_subgroups(table: pd.DataFrame, path: PathLike = None) -> Figure:
    """Forest plot of :func:`ham_utils.subgroups.subgroup_table`: balanced accuracy and
    melanoma sensitivity per subgroup with 95% intervals; groups too small to read in grey."""
    rows = table.iloc[::-1].reset_index(drop=True)  # first row at the top
    fig, axes = _figure(1, 2, figsize=(11, 0.32 * len(rows) + 1.5), sharey=True)
    labels = [
        f"{r.variable}: {r.subgroup} (n={r.images}{', too small' if r.too_small else ''})"
        for r in rows.itertuples()
    ]
    for ax, key, title in (
        (axes[0, 0], "balanced_accuracy", "balanced accuracy"),
        (axes[0, 1], "melanoma_sensitivity", "melanoma sensitivity"),
    ):
        for y, row in rows.iterrows():
            value, interval = row[key], row[f"{key}_interval"]
            if value is None or pd.isna(value):
                continue
            colour = "tab:grey" if row["too_small"] else "tab:blue"
            ax.plot(value, y, "o", color=colour)
            if interval is not None:
                ax.plot(interval, [y, y], color=colour, linewidth=2)
        ax.set_xlim(0, 1)
        ax.set_title(f"{title} (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(rows)), labels, fontsize="small")
    fig.suptitle("For whom does the model fail? Test lesions by subgroup")
    return _finish(fig, path)


def plot_per_class_f1(
    metrics: dict[str, Any], path: PathLike = None, set_label: str = "test"
) -> Figure:
    """Per-class F1 and recall from :func:`ham_utils.scoring.evaluation_metrics`, on the set
    ``set_label`` names (the test split, an external set)."""
    per_class = metrics["per_class"]
    names = list(per_class)
    x, width = np.arange(len(names)), 0.4
    fig, axes = _figure(figsize=(9, 4.5))
    ax = axes[0, 0]
    for offset, key in ((-width / 2, "f1"), (width / 2, "recall")):
        bars = ax.bar(x + offset, [per_class[c][key] for c in names], width, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
    for key, colour, label in (
        ("macro_f1", "C0", "macro F1"),
        ("balanced_accuracy", "C1", "balanced accuracy"),
    ):
        if metrics.get(key) is not None:
            ax.axhline(
                metrics[key],
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"{label} {metrics[key]:.3f}",
            )
    ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in names])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(f"Per-class F1 and recall (n = {set_label} images of the class)")
    ax.legend(fontsize="small", ncols=2)
    return _finish(fig, path)


# --- EDA -----------------------------------------------------------------------------------


def plot_class_distribution(
    counts: pd.Series | pd.DataFrame, path: PathLike = None, title: str = "Images per class"
) -> Figure:
    """Bars of images per class; a DataFrame gives one group of bars per row, one per column."""
    table = counts.to_frame() if isinstance(counts, pd.Series) else counts
    x, width = np.arange(len(table)), 0.8 / table.shape[1]
    fig, axes = _figure(figsize=(max(6.0, 0.9 * len(table) * table.shape[1] ** 0.5), 4.5))
    ax = axes[0, 0]
    for i, column in enumerate(table.columns):
        offset = (i - (table.shape[1] - 1) / 2) * width
        bars = ax.bar(x + offset, table[column], width, label=str(column))
        ax.bar_label(bars, fontsize="x-small")
    ax.set_xticks(x, [str(c) for c in table.index])
    ax.set_ylabel("images")
    ax.set_title(title)
    if table.shape[1] > 1:
        ax.legend(fontsize="small")
    return _finish(fig, path)


# --- comparison of runs --------------------------------------------------------------------


def _dodged_points(
    ax: Axes, table: pd.DataFrame, group: str, runs: Sequence[str], groups: Sequence[str]
) -> None:
    """One point with its interval bar per run within each group, side by side."""
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        rows = table[table["run"] == run].set_index(group).reindex(groups)
        x = np.arange(len(groups)) + (i - (len(runs) - 1) / 2) * width
        values = rows["value"].to_numpy(float)
        errors = np.abs(rows[["low", "high"]].to_numpy(float).T - values)
        ax.errorbar(
            x, values, yerr=np.nan_to_num(errors), fmt="o", capsize=3, label=run, color=f"C{i}"
        )
    ax.set_xticks(np.arange(len(groups)), list(groups))
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)


def plot_comparison(comparison: Any, path: PathLike = None) -> Figure:
    """A :class:`ham_utils.compare.Comparison`: the headline test metrics of each run with
    their 95% intervals (left), and each class's recall side by side (right)."""
    runs = [r.label for r in comparison.runs]
    fig, axes = _figure(1, 2, figsize=(14, 5), width_ratios=[2, 3])
    metrics = list(comparison.metrics["metric"].drop_duplicates())
    _dodged_points(axes[0, 0], comparison.metrics, "metric", runs, metrics)
    from ham_utils.compare import METRICS

    labels = [METRICS.get(m, m).replace(" ", "\n", 1) for m in metrics]
    axes[0, 0].set_xticks(range(len(metrics)), labels)
    axes[0, 0].set_title("Headline test metrics (95% interval)")
    classes = list(comparison.recall["class"].drop_duplicates())
    _dodged_points(axes[0, 1], comparison.recall, "class", runs, classes)
    axes[0, 1].set_title("Recall of each class (95% interval)")
    axes[0, 1].legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{len(runs)} runs on the same {comparison.n_images} test images")
    return _finish(fig, path)


def plot_differences(comparison: Any, path: PathLike = None) -> Figure:
    """Forest plot of the paired differences (b - a) with their 95% intervals, one panel per
    metric; a difference whose interval excludes zero is drawn in colour."""
    from ham_utils.compare import METRICS

    table = comparison.differences
    metrics = list(table["metric"].drop_duplicates())
    pairs = table[["a", "b"]].drop_duplicates().iloc[::-1].reset_index(drop=True)
    fig, axes = _figure(
        1,
        max(1, len(metrics)),
        figsize=(4.5 * max(1, len(metrics)), 0.35 * len(pairs) + 1.6),
        sharey=True,
    )
    for ax, metric in zip(axes[0], metrics, strict=False):
        rows = table[table["metric"] == metric]
        for y, pair in pairs.iterrows():
            row = rows[(rows["a"] == pair["a"]) & (rows["b"] == pair["b"])].iloc[0]
            clear = row["low"] > 0 or row["high"] < 0
            colour = "tab:blue" if clear else "tab:grey"
            ax.plot(row["difference"], y, "o", color=colour)
            ax.plot([row["low"], row["high"]], [y, y], color=colour, linewidth=2)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(METRICS.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(pairs)), [f"{p.b} - {p.a}" for p in pairs.itertuples()])
    fig.suptitle("Paired differences on the same test images (95% interval; grey: includes 0)")
    return _finish(fig, path)
