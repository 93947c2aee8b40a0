"""Figures of a comparison of runs: each run's headline metrics and per-class recall with their
intervals, and the paired differences. They draw the tables of
:class:`ham_utils.studies.compare.Comparison`, given as arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ham_utils.figures.base import PathLike, finish, new_figure


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


def plot_comparison(
    metrics: pd.DataFrame,
    recall: pd.DataFrame,
    labels: Mapping[str, str],
    n_images: int,
    path: PathLike = None,
) -> Figure:
    """Each run's headline test metrics with their 95% intervals (left) and each class's recall
    side by side (right): ``metrics`` and ``recall`` are tables of run, metric or class, value,
    low and high; ``labels`` names the metrics on the axis."""
    runs = list(metrics["run"].drop_duplicates())
    fig, axes = new_figure(1, 2, figsize=(14, 5), width_ratios=[2, 3])
    names = list(metrics["metric"].drop_duplicates())
    _dodged_points(axes[0, 0], metrics, "metric", runs, names)
    axes[0, 0].set_xticks(
        range(len(names)), [labels.get(m, m).replace(" ", "\n", 1) for m in names]
    )
    axes[0, 0].set_title("Headline test metrics (95% interval)")
    classes = list(recall["class"].drop_duplicates())
    _dodged_points(axes[0, 1], recall, "class", runs, classes)
    axes[0, 1].set_title("Recall of each class (95% interval)")
    axes[0, 1].legend(fontsize="small", loc="lower right")
    fig.suptitle(f"{len(runs)} runs on the same {n_images} test images")
    return finish(fig, path)


def plot_differences(
    table: pd.DataFrame, labels: Mapping[str, str], path: PathLike = None
) -> Figure:
    """Forest plot of paired differences (b - a): ``table`` has a row per pair of runs and metric
    with the difference and its 95% interval (low, high); one panel per metric, named by
    ``labels``. A difference whose interval excludes zero is drawn in colour."""
    metrics = list(table["metric"].drop_duplicates())
    pairs = table[["a", "b"]].drop_duplicates().iloc[::-1].reset_index(drop=True)
    fig, axes = new_figure(
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
        ax.set_title(labels.get(metric, metric))
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(pairs)), [f"{p.b} - {p.a}" for p in pairs.itertuples()])
    fig.suptitle("Paired differences on the same test images (95% interval; grey: includes 0)")
    return finish(fig, path)
