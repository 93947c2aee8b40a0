"""Test-set metrics, melanoma operating points, calibration and temperature scaling.

Pure numpy / scikit-learn / scipy (no Keras), so it runs on saved predictions anywhere.
Labels are integer class indices in the order of :data:`ham_utils.config.CLASSES`;
probabilities are an ``N x K`` array of softmax outputs in the same order.

Everything :func:`evaluation_metrics` returns is JSON-ready: Python floats and ints, with
undefined values (a class with no positives, a NaN, an infinite threshold) as ``None``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from ham_utils.config import CLASSES

ECE_BINS = 15
SPECIFICITY_TARGETS = (0.90, 0.95)
# Probabilities are clipped before taking logs so that a hard 0 does not become -inf.
_EPS = 1e-12
# Bounds of the fitted temperature; far outside anything a trained softmax needs.
_TEMPERATURE_BOUNDS = (0.05, 20.0)


def _float(value: Any) -> float | None:
    """A Python float, or None for NaN, infinity and None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(
            f"probs must be N x K with N = len(y_true) = {len(y_true)}, got shape {probs.shape}"
        )
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return y_true, probs


def sensitivity_at_specificity(
    y_binary: np.ndarray, scores: np.ndarray, target: float
) -> dict[str, float | None]:
    """The highest sensitivity among thresholds whose specificity is at least ``target``.

    Rule: predict positive when ``score >= threshold``. Of the thresholds that reach that
    best sensitivity, the highest (most specific) one is returned. The threshold is ``inf``
    when only "never positive" meets the target. All values are None when ``y_binary`` lacks
    positives or negatives.
    """
    y_binary = np.asarray(y_binary).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    result: dict[str, float | None] = {
        "target_specificity": float(target),
        "sensitivity": None,
        "specificity": None,
        "threshold": None,
    }
    if y_binary.all() or not y_binary.any():
        return result
    # drop_intermediate=False keeps every distinct score as a candidate threshold.
    fpr, tpr, thresholds = roc_curve(y_binary, scores, drop_intermediate=False)
    specificity = 1.0 - fpr
    # Thresholds decrease along the curve, so the feasible points are a prefix; the small
    # tolerance stops 1 - 2/20 from missing a target of 0.9 by rounding.
    feasible = np.flatnonzero(specificity >= target - 1e-12)
    best = feasible[np.argmax(tpr[feasible])]  # argmax: first, i.e. highest threshold
    result.update(
        sensitivity=float(tpr[best]),
        specificity=float(specificity[best]),
        threshold=float(thresholds[best]),
    )
    return result


def threshold_for_sensitivity(
    positive: np.ndarray, scores: np.ndarray, target: float
) -> float | None:
    """The highest threshold whose sensitivity (positive when ``score >= threshold``) on these
    cases reaches ``target``: the ceil(target x positives)-th highest positive score. Chosen
    on the validation split, then applied unchanged to test. None without positives."""
    positive = np.asarray(positive).astype(bool).ravel()
    ranked = np.sort(np.asarray(scores, dtype=np.float64).ravel()[positive])[::-1]
    if not len(ranked):
        return None
    needed = max(1, math.ceil(target * len(ranked) - 1e-9))
    return float(ranked[needed - 1])


def operating_point(
    positive: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """Sensitivity, specificity and cases flagged per 100 when ``score >= threshold``."""
    positive = np.asarray(positive).astype(bool).ravel()
    flagged = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return {
        "threshold": float(threshold),
        "sensitivity": float((flagged & positive).sum() / n_pos) if n_pos else None,
        "specificity": float((~flagged & ~positive).sum() / n_neg) if n_neg else None,
        "flagged_per_100": float(100 * flagged.mean()) if len(flagged) else None,
    }


def risk_coverage(y_true: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Selective prediction: the most confident ``k`` cases kept (top-class probability),
    the rest set aside, for every ``k``. Columns: coverage, accuracy, balanced_accuracy (mean
    recall over the classes present among the kept cases)."""
    y_true, probs = _check(y_true, probs)
    order = np.argsort(-probs.max(axis=1), kind="stable")
    y, predicted = y_true[order], probs[order].argmax(axis=1)
    k = probs.shape[1]
    truth = np.eye(k)[y]
    hits = np.cumsum(truth * (predicted == y)[:, None], axis=0)
    support = np.cumsum(truth, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
        balanced = np.nansum(recall, axis=1) / (support > 0).sum(axis=1)
    kept = np.arange(1, len(y) + 1)
    return pd.DataFrame(
        {
            "coverage": kept / len(y),
            "accuracy": np.cumsum(predicted == y) / kept,
            "balanced_accuracy": balanced,
        }
    )


SELECTIVE_COVERAGES = (0.8, 0.9)


def selective_summary(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Area under the risk-coverage curve (risk = 1 - accuracy, and 1 - balanced accuracy;
    lower is better) and accuracy and balanced accuracy at 80% and 90% coverage."""
    curve = risk_coverage(y_true, probs)
    at = {}
    for coverage in SELECTIVE_COVERAGES:
        row = curve.iloc[max(0, math.ceil(coverage * len(curve)) - 1)]
        at[f"{coverage:.2f}"] = {
            "accuracy": float(row["accuracy"]),
            "balanced_accuracy": float(row["balanced_accuracy"]),
        }
    return {
        "aurc": float((1 - curve["accuracy"]).mean()),
        "aurc_balanced": float((1 - curve["balanced_accuracy"]).mean()),
        "at_coverage": at,
    }


def reliability_table(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> pd.DataFrame:
    """Top-class confidence vs accuracy in ``bins`` equal-width bins over [0, 1].

    Bin ``i`` holds confidences in ``(i/bins, (i+1)/bins]`` (the first also holds 0). Columns:
    lower, upper, confidence (mean), accuracy, count; empty bins have NaN means and count 0.
    """
    y_true, probs = _check(y_true, probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "confidence": mean_confidence,
            "accuracy": accuracy,
            "count": count,
        }
    )


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of the top-class confidence: sum over bins of (share of images) x |accuracy - conf|.

    Equal-width bins as in :func:`reliability_table` (Guo et al., 2017). 0 is perfectly
    calibrated; an empty input gives NaN.
    """
    table = reliability_table(y_true, probs, bins).query("count > 0")
    total = table["count"].sum()
    if total == 0:
        return float("nan")
    gap = (table["accuracy"] - table["confidence"]).abs()
    return float((gap * table["count"]).sum() / total)


def _as_log_probs(values: np.ndarray) -> np.ndarray:
    """Logits unchanged; rows that look like probabilities (in [0, 1], sum 1) as logs."""
    values = np.asarray(values, dtype=np.float64)
    is_probs = values.min() >= 0 and values.max() <= 1 and np.allclose(values.sum(1), 1, atol=1e-3)
    return np.log(np.clip(values, _EPS, 1.0)) if is_probs else values


def fit_temperature(logits_or_probs_val: np.ndarray, y_val: np.ndarray) -> float:
    """The temperature T that minimises the validation NLL of ``softmax(logits / T)``.

    Fit on the validation split, then apply to test predictions with
    :func:`apply_temperature`; fitting on test would leak. Probabilities are accepted (their
    logs are logits up to a per-row constant, which softmax ignores). T > 1 softens
    over-confident predictions; argmax, hence accuracy, is unchanged.
    """
    logits = _as_log_probs(logits_or_probs_val)
    y_val, logits = _check(y_val, logits)
    rows = np.arange(len(y_val))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, y_val].mean())

    # Optimising log T keeps T positive and makes the search symmetric in T and 1/T.
    found = minimize_scalar(
        nll, bounds=np.log(_TEMPERATURE_BOUNDS), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(found.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities (or logits) by a temperature from :func:`fit_temperature`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(_as_log_probs(probs) / temperature, axis=1)


def _per_class(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    labels = list(range(len(classes)))
    predicted = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0
    )
    table = {}
    for k, name in enumerate(classes):
        positive = y_true == k
        has_both = positive.any() and not positive.all()
        table[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": float(roc_auc_score(positive, probs[:, k])) if has_both else None,
            "average_precision": (
                float(average_precision_score(positive, probs[:, k])) if positive.any() else None
            ),
        }
    return table


def _melanoma(y_true: np.ndarray, probs: np.ndarray, index: int) -> dict[str, Any]:
    positive = y_true == index
    predicted = probs.argmax(axis=1) == index
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return {
        "sensitivity": (predicted & positive).sum() / n_pos if n_pos else None,
        "specificity": (~predicted & ~positive).sum() / n_neg if n_neg else None,
        "sensitivity_at_specificity": {
            f"{t:.2f}": sensitivity_at_specificity(positive, probs[:, index], t)
            for t in SPECIFICITY_TARGETS
        },
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(value)
    return value


def evaluation_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str] = CLASSES,
    positive: str = "mel",
) -> dict[str, Any]:
    """All test-set metrics as one JSON-ready dict (see the module docstring for None).

    Predictions are the argmax. Balanced accuracy is the mean recall over classes present
    in ``y_true`` (ISIC 2018); macro/weighted F1 average over the classes that occur in the
    labels or the predictions (scikit-learn's default). ``macro_roc_auc`` is the mean
    one-vs-rest AUC over classes with both positives and negatives, and
    ``macro_average_precision`` the mean average precision over classes with positives.
    ``melanoma`` reports the ``positive`` class at the argmax and at fixed specificities on
    its probability.
    """
    y_true, probs = _check(y_true, probs)
    classes = list(classes)
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns for {len(classes)} classes")
    if positive not in classes:
        raise ValueError(f"positive class {positive!r} not in {classes}")
    if not len(y_true):
        raise ValueError("no images to evaluate")
    predicted = probs.argmax(axis=1)
    per_class = _per_class(y_true, probs, classes)
    aucs = [c["roc_auc"] for c in per_class.values() if c["roc_auc"] is not None]
    aps = [c["average_precision"] for c in per_class.values() if c["average_precision"] is not None]
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": those classes are left out, as intended.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, predicted)
    metrics = {
        "n_images": len(y_true),
        "classes": classes,
        "accuracy": accuracy_score(y_true, predicted),
        "balanced_accuracy": balanced,
        "macro_f1": f1_score(y_true, predicted, average="macro", zero_division=0),
        "weighted_f1": f1_score(y_true, predicted, average="weighted", zero_division=0),
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "macro_average_precision": float(np.mean(aps)) if aps else None,
        "per_class": per_class,
        "melanoma": _melanoma(y_true, probs, classes.index(positive)),
        "ece": expected_calibration_error(y_true, probs),
        "confusion_matrix": confusion_matrix(
            y_true, predicted, labels=list(range(len(classes)))
        ).tolist(),
    }
    return _jsonable(metrics)


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The ``per_class`` part of :func:`evaluation_metrics` as a table, one row per class."""
    table = pd.DataFrame.from_dict(metrics["per_class"], orient="index")
    table.index.name = "class"
    numeric = table.drop(columns="support").astype(float)  # None -> NaN
    return numeric.assign(support=table["support"].astype(int))[table.columns]
