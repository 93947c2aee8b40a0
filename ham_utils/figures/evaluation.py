"""Figures of one evaluation: confusion matrices, ROC and precision-recall curves, reliability,
risk-coverage, per-class F1 and the subgroup forest plot. Each takes the labels, probabilities
or tables that :mod:`ham_utils.evaluation` computed; none computes a metric of its own beyond
the curves it draws."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ham_utils.config import CLASSES
from ham_utils.figures.base import PathLike, finish, new_figure


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
    fig, axes = new_figure(1, 2, figsize=(13, 5.5))
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
    return finish(fig, path)


def _one_vs_rest_axes(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], curve: str
) -> tuple[Figure, Axes]:
    """One curve per class ("roc" or "pr"); classes lacking positives or negatives are noted."""
    y_true, probs = np.asarray(y_true).astype(int).ravel(), np.asarray(probs, dtype=float)
    fig, axes = new_figure(figsize=(7, 6))
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
    :func:`ham_utils.evaluation.bootstrap.roc_bands` on :data:`ROC_BAND_GRID`), each curve's
    pointwise 95% bootstrap band shaded in its colour."""
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
    return finish(fig, path)


def plot_pr_curves(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str] = CLASSES, path: PathLike = None
) -> Figure:
    """One-vs-rest precision-recall curve per class with its average precision in the legend."""
    fig, ax = _one_vs_rest_axes(y_true, probs, classes, "pr")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall, one class vs the rest")
    ax.legend(loc="lower left", fontsize="small")
    return finish(fig, path)


def plot_reliability(
    table: pd.DataFrame,
    ece: float,
    path: PathLike = None,
    bands: np.ndarray | None = None,
) -> Figure:
    """Reliability diagram of the top-class confidence from
    :func:`ham_utils.evaluation.scoring.reliability_table` (one row per bin), with the images per
    bin below; with ``bands`` (from :func:`ham_utils.evaluation.bootstrap.reliability_bands`), each
    bin's 95% bootstrap interval of the accuracy as an error bar."""
    bins = len(table)
    centres, width = (table["lower"] + table["upper"]) / 2, 1 / bins
    fig, axes = new_figure(2, 1, figsize=(6, 7), sharex=True, height_ratios=(3, 1))
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
    return finish(fig, path)


def plot_risk_coverage(
    curve: pd.DataFrame, marked: Sequence[float] = (), path: PathLike = None
) -> Figure:
    """Selective prediction from :func:`ham_utils.evaluation.scoring.risk_coverage`: accuracy and
    balanced accuracy of the most confident cases as the least confident are set aside, with
    the ``marked`` coverages drawn as lines."""
    fig, axes = new_figure(figsize=(7, 4.5))
    ax = axes[0, 0]
    ax.plot(curve["coverage"], curve["accuracy"], label="accuracy")
    ax.plot(curve["coverage"], curve["balanced_accuracy"], label="balanced accuracy")
    for coverage in marked:
        ax.axvline(coverage, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of cases the model keeps, most confident first)")
    ax.set_ylabel("score on the kept cases")
    ax.set_title("Risk-coverage: how much better the model is on the cases it is sure of")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return finish(fig, path)


def plot_subgroups(table: pd.DataFrame, path: PathLike = None) -> Figure:
    """Forest plot of :func:`ham_utils.evaluation.subgroups.subgroup_table`: balanced accuracy and
    melanoma sensitivity per subgroup with 95% intervals; groups too small to read in grey."""
    rows = table.iloc[::-1].reset_index(drop=True)  # first row at the top
    fig, axes = new_figure(1, 2, figsize=(11, 0.32 * len(rows) + 1.5), sharey=True)
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
    return finish(fig, path)


def plot_per_class_f1(
    metrics: dict[str, Any], path: PathLike = None, set_label: str = "test"
) -> Figure:
    """Per-class F1 and recall from :func:`ham_utils.evaluation.scoring.evaluation_metrics`, on
    the set ``set_label`` names (the test split, an external set)."""
    per_class = metrics["per_class"]
    names = list(per_class)
    x, width = np.arange(len(names)), 0.4
    fig, axes = new_figure(figsize=(9, 4.5))
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
    return finish(fig, path)
