"""Bootstrap confidence intervals for every headline metric of an evaluation, vectorised.

A resample draws the evaluated units (lesions, or images when each lesion has one) with
replacement. Instead of building ``B`` resampled datasets, each resample is a row of counts
``w`` (how often each image was drawn), and every metric is computed as a weighted metric
over all ``B`` rows at once with matrix products, cumulative sums over the sorted scores
and percentiles: 1,000 resamples of 1,500 predictions take about a second (``make bench``).
scikit-learn has no weighted, vectorised bootstrap of these metrics, hence this module;
:func:`weighted_metrics` with integer counts equals
:func:`ham_utils.evaluation.scoring.evaluation_metrics` on the repeated rows
(tests/test_bootstrap.py checks it metric by metric).

The interval is the percentile interval (2.5th and 97.5th percentiles for 95%).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ham_utils.config import CLASSES
from ham_utils.evaluation.scoring import ECE_BINS, SPECIFICITY_TARGETS

RESAMPLES = 1000
LEVEL = 0.95
SEED = 2018
# Same tolerance as scoring.sensitivity_at_specificity: 1 - 2/20 must reach a 0.9 target.
_SPECIFICITY_TOLERANCE = 1e-12


def resample_counts(
    n_items: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    groups: Sequence[Any] | None = None,
) -> np.ndarray:
    """``(resamples, n_items)`` draw counts: images drawn with replacement, or, with
    ``groups`` (one lesion id per image), whole lesions drawn and each image counted as
    often as its lesion."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=resamples)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(codes.max()) + 1
    drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=resamples)
    return drawn[:, codes]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


class _Ranked:
    """One class's scores sorted once, with ties grouped: the weighted ROC and PR sums."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")  # descending: thresholds from the top
        ranked = scores[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        w = weights[:, order]
        pos = positive[order]
        self.tp = np.add.reduceat(w * pos, starts, axis=1)  # (B, groups) per tie group
        self.fp = np.add.reduceat(w * ~pos, starts, axis=1)
        self.n_pos = self.tp.sum(axis=1)
        self.n_neg = self.fp.sum(axis=1)

    def roc_auc(self) -> np.ndarray:
        """P(score of a positive > score of a negative), ties counting one half."""
        negatives_below = self.n_neg[:, None] - np.cumsum(self.fp, axis=1)
        pairs = (self.tp * (negatives_below + 0.5 * self.fp)).sum(axis=1)
        return _divide(pairs, self.n_pos * self.n_neg)

    def average_precision(self) -> np.ndarray:
        """sum over thresholds of (recall gained) x precision, as scikit-learn computes it."""
        precision = _divide(np.cumsum(self.tp, axis=1), np.cumsum(self.tp + self.fp, axis=1))
        gained = np.where(self.tp > 0, self.tp * np.nan_to_num(precision), 0.0)
        return _divide(gained.sum(axis=1), self.n_pos)

    def sensitivity_at_specificity(self, target: float) -> np.ndarray:
        """The best sensitivity among thresholds with specificity >= ``target`` ("never
        positive", sensitivity 0, always qualifies)."""
        specificity = 1.0 - _divide(np.cumsum(self.fp, axis=1), self.n_neg[:, None])
        sensitivity = _divide(np.cumsum(self.tp, axis=1), self.n_pos[:, None])
        feasible = specificity >= target - _SPECIFICITY_TOLERANCE
        best = np.where(feasible, sensitivity, 0.0).max(axis=1, initial=0.0)
        return np.where((self.n_pos > 0) & (self.n_neg > 0), best, np.nan)


def weighted_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    classes: Sequence[str] = CLASSES,
    positive: str = "mel",
) -> dict[str, np.ndarray]:
    """Every headline metric for each row of ``weights`` (B x N counts): name -> (B,) values.

    The same definitions as :func:`ham_utils.evaluation.scoring.evaluation_metrics`; a metric
    that is undefined in a resample (no positives of a class) is NaN there.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    k = len(classes)
    predicted = probs.argmax(axis=1)
    truth = np.eye(k)[y_true]  # (N, K)
    calls = np.eye(k)[predicted]
    correct = (predicted == y_true).astype(np.float64)

    total = w.sum(axis=1)
    support = w @ truth  # (B, K)
    called = w @ calls
    hits = w @ (truth * correct[:, None])
    recall = _divide(hits, support)
    precision = np.where(called > 0, _divide(hits, called), 0.0)  # zero_division=0
    f1 = np.where(
        precision + np.nan_to_num(recall) > 0,
        _divide(2 * precision * np.nan_to_num(recall), precision + np.nan_to_num(recall)),
        0.0,
    )
    present = support > 0
    in_labels = present | (called > 0)  # scikit-learn's macro F1 label set
    metrics = {
        "accuracy": _divide(w @ correct, total),
        "balanced_accuracy": _divide(np.where(present, recall, 0).sum(1), present.sum(1)),
        "macro_f1": _divide(np.where(in_labels, f1, 0).sum(1), in_labels.sum(1)),
        "weighted_f1": _divide((f1 * support).sum(1), support.sum(1)),
    }

    ranked = [_Ranked(probs[:, c], y_true == c, w) for c in range(k)]
    aucs = np.stack([r.roc_auc() for r in ranked], axis=1)
    aps = np.stack([r.average_precision() for r in ranked], axis=1)
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        metrics["macro_roc_auc"] = np.nanmean(aucs, axis=1)
        metrics["macro_average_precision"] = np.nanmean(aps, axis=1)

    m = list(classes).index(positive)
    negative = 1.0 - truth[:, m]
    metrics["melanoma_sensitivity"] = recall[:, m]
    metrics["melanoma_specificity"] = _divide(w @ (negative * (predicted != m)), w @ negative)
    for target in SPECIFICITY_TARGETS:
        key = f"melanoma_sensitivity_at_specificity_{target:.2f}"
        metrics[key] = ranked[m].sensitivity_at_specificity(target)

    confidence = probs.max(axis=1)
    bins = np.eye(ECE_BINS)[
        np.clip(np.ceil(confidence * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
    ]
    metrics["ece"] = _divide(np.abs(w @ ((correct - confidence)[:, None] * bins)).sum(1), total)

    for c, name in enumerate(classes):
        metrics[f"recall_{name}"] = recall[:, c]
        metrics[f"precision_{name}"] = precision[:, c]
        metrics[f"roc_auc_{name}"] = aucs[:, c]
    return metrics


class _quiet_nanmean:
    """np.nanmean warns on an all-NaN row (a resample with no class of both kinds)."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)


def roc_bands(
    y_true: np.ndarray,
    probs: np.ndarray,
    counts: np.ndarray,
    fpr_grid: np.ndarray,
    level: float = LEVEL,
) -> np.ndarray:
    """Pointwise ``level`` bands of each class's one-vs-rest ROC curve: the sensitivity at
    each false positive rate of ``fpr_grid`` over the resamples. (K, len(grid), 2)."""
    y_true = np.asarray(y_true).astype(int)
    w = np.asarray(counts, dtype=np.float64)
    tail = 100 * (1 - level) / 2
    bands = np.full((probs.shape[1], len(fpr_grid), 2), np.nan)
    for c in range(probs.shape[1]):
        ranked = _Ranked(np.asarray(probs[:, c], dtype=np.float64), y_true == c, w)
        fpr = _divide(np.cumsum(ranked.fp, axis=1), ranked.n_neg[:, None])
        tpr = _divide(np.cumsum(ranked.tp, axis=1), ranked.n_pos[:, None])
        usable = np.isfinite(fpr[:, -1]) & np.isfinite(tpr[:, -1])
        if not usable.any():
            continue
        curves = np.empty((int(usable.sum()), len(fpr_grid)))
        for row, (x, y) in enumerate(zip(fpr[usable], tpr[usable], strict=True)):
            at = np.searchsorted(x, fpr_grid, side="right") - 1  # the last point left of it
            curves[row] = np.where(at >= 0, y[np.clip(at, 0, None)], 0.0)
        bands[c] = np.percentile(curves, [tail, 100 - tail], axis=0).T
    return bands


def reliability_bands(
    y_true: np.ndarray,
    probs: np.ndarray,
    counts: np.ndarray,
    bins: int = ECE_BINS,
    level: float = LEVEL,
) -> np.ndarray:
    """The ``level`` interval of the accuracy in each confidence bin of the reliability
    diagram (bins as :func:`ham_utils.evaluation.scoring.reliability_table`). (bins, 2); NaN where a
    bin is empty in most resamples."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    onehot = np.eye(bins)[index]
    w = np.asarray(counts, dtype=np.float64)
    accuracy = _divide(w @ (onehot * correct[:, None]), w @ onehot)  # (B, bins)
    return np.array([percentile_interval(a, level) or [np.nan, np.nan] for a in accuracy.T])


def flag_intervals(
    positive: np.ndarray, flagged: np.ndarray, counts: np.ndarray, level: float = LEVEL
) -> dict[str, list[float] | None]:
    """Intervals of a fixed threshold's sensitivity, specificity and cases flagged per 100."""
    positive = np.asarray(positive, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)
    values = {
        "sensitivity": _divide(w @ (positive * flagged), w @ positive),
        "specificity": _divide(w @ ((1 - positive) * (1 - flagged)), w @ (1 - positive)),
        "flagged_per_100": 100 * _divide(w @ flagged, w.sum(axis=1)),
    }
    return {name: percentile_interval(v, level) for name, v in values.items()}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The central ``level`` percentile interval of the finite values, or None if none are."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str] = CLASSES,
    groups: Sequence[Any] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    counts: np.ndarray | None = None,
) -> dict[str, Any]:
    """95% (``level``) bootstrap percentile intervals of every headline metric.

    ``groups``: a lesion id per image, to resample lesions when a lesion has several images;
    None resamples images (one image per lesion). ``counts``: resamples already drawn with
    these settings (:func:`resample_counts`), to share them with other intervals. Returns
    ``{"intervals": {metric: [low, high] or None}, "resamples", "seed", "level", "unit"}``.
    """
    if counts is None:
        counts = resample_counts(len(y_true), resamples, seed, groups)
    resamples = len(counts)
    values = weighted_metrics(y_true, probs, counts, classes)
    return {
        "intervals": {name: percentile_interval(v, level) for name, v in values.items()},
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "unit": "lesion" if groups is not None else "image (one per lesion)",
    }


def with_interval(value: float | None, interval: list[float] | None, decimals: int = 3) -> str:
    """``0.612 [0.581, 0.643]``: a value and its interval, as tables and the app show them
    (``decimals=1`` for counts per 100: ``35.6 [32.6, 38.6]``)."""
    if value is None:
        return "n/a"
    text = f"{value:.{decimals}f}"
    return text + (f" [{interval[0]:.{decimals}f}, {interval[1]:.{decimals}f}]" if interval else "")


def screening_cell(point: dict[str, Any], intervals: dict[str, Any], name: str, key: str) -> str:
    """One figure of the screening operating point ``name`` (``point[key]``) with its interval,
    as the model card and the notebook show it: counts per 100 with one decimal."""
    decimals = 1 if key.endswith("per_100") else 3
    return with_interval(point[key], intervals.get(f"screening_{name}_{key}"), decimals)


def resampling_words(uncertainty: dict[str, Any]) -> str:
    """What the intervals resample, in plain words: ``1,000 resamples of the images, one per
    lesion``."""
    count = uncertainty.get("resamples")
    if not count:
        return "no resamples"
    unit = uncertainty.get("unit", "")
    if unit == "lesion":
        return f"{count:,} resamples of the lesions, each with all its images"
    if unit.startswith("image"):
        return f"{count:,} resamples of the images, one per lesion"
    return f"{count:,} resamples of {unit or 'the images'}"


def headline_rows(metrics: dict[str, Any]) -> list[tuple[str, float | None, list[float] | None]]:
    """(label, value, 95% interval) of an evaluation's headline metrics, most telling first:
    what the notebook's table and the model card show."""
    melanoma = metrics["melanoma"]
    intervals = metrics.get("uncertainty", {}).get("intervals", {})
    rows = [
        ("balanced accuracy (ISIC 2018 metric)", metrics["balanced_accuracy"], "balanced_accuracy"),
        ("macro F1", metrics["macro_f1"], "macro_f1"),
        ("macro ROC AUC (one-vs-rest)", metrics["macro_roc_auc"], "macro_roc_auc"),
        ("macro average precision", metrics.get("macro_average_precision"),
         "macro_average_precision"),
        ("melanoma sensitivity", melanoma["sensitivity"], "melanoma_sensitivity"),
        ("melanoma specificity", melanoma["specificity"], "melanoma_specificity"),
        *(
            (f"melanoma sensitivity at {float(t):.0%} specificity", point["sensitivity"],
             f"melanoma_sensitivity_at_specificity_{t}")
            for t, point in melanoma["sensitivity_at_specificity"].items()
        ),
        ("weighted F1", metrics["weighted_f1"], "weighted_f1"),
        ("accuracy", metrics["accuracy"], "accuracy"),
        ("expected calibration error (its bootstrap range runs high: not a confidence interval)",
         metrics["ece"], "ece"),
    ]  # fmt: skip
    return [(label, value, intervals.get(key)) for label, value, key in rows]
