import json
import math

import numpy as np
import pytest
from scipy.special import softmax

from ham_utils.config import CLASSES
from ham_utils.evaluation.scoring import (
    apply_temperature,
    evaluation_metrics,
    expected_calibration_error,
    fit_temperature,
    per_class_table,
    reliability_table,
    sensitivity_at_specificity,
)


def one_hot_probs(predicted, k, confidence=0.9):
    """Probabilities whose argmax is ``predicted``, the rest spread evenly."""
    probs = np.full((len(predicted), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


@pytest.fixture(scope="module")
def random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES), 300)
    logits = rng.normal(size=(300, len(CLASSES)))
    logits[np.arange(300), y] += 1.5  # better than chance
    return y, softmax(logits, axis=1)


def test_balanced_accuracy_is_mean_recall_by_hand():
    # class 0: 2/2 right, class 1: 1/2 right, class 2: 0/2 right -> (1 + 0.5 + 0) / 3
    y = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 0, 0, 1])
    m = evaluation_metrics(y, one_hot_probs(predicted, 3), classes=("a", "mel", "c"))
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert m["per_class"]["mel"]["recall"] == pytest.approx(0.5)
    # mel: TP 1, FN 1; negatives 0,0,2,2 -> predicted mel once (last image) -> spec 3/4
    assert m["melanoma"]["sensitivity"] == pytest.approx(0.5)
    assert m["melanoma"]["specificity"] == pytest.approx(0.75)


def test_sensitivity_at_specificity_by_hand():
    negatives = np.arange(1, 21) / 20  # 0.05, 0.10, ..., 1.00
    positives = np.array([0.97, 0.93, 0.91, 0.6, 0.2])
    y = np.r_[np.zeros(20), np.ones(5)]
    scores = np.r_[negatives, positives]
    # >= 0.95 specificity allows one false positive (1.00): threshold 0.97 catches 1 of 5.
    at95 = sensitivity_at_specificity(y, scores, 0.95)
    assert at95["threshold"] == pytest.approx(0.97)
    assert at95["sensitivity"] == pytest.approx(0.2)
    assert at95["specificity"] == pytest.approx(0.95)
    # >= 0.90 allows two (0.95, 1.00): threshold 0.91 catches 0.97, 0.93, 0.91.
    at90 = sensitivity_at_specificity(y, scores, 0.90)
    assert at90["threshold"] == pytest.approx(0.91)
    assert at90["sensitivity"] == pytest.approx(0.6)
    assert at90["specificity"] == pytest.approx(0.90)
    # >= 0.85 also admits 0.90 (a negative), with no gain: the more specific 0.91 is kept.
    at85 = sensitivity_at_specificity(y, scores, 0.85)
    assert at85["threshold"] == pytest.approx(0.91)
    assert at85["specificity"] == pytest.approx(0.90)
    # The stated rule holds: positive when score >= threshold.
    predicted = scores >= at90["threshold"]
    assert predicted[y == 1].mean() == pytest.approx(at90["sensitivity"])
    assert 1 - predicted[y == 0].mean() == pytest.approx(at90["specificity"])


def test_sensitivity_at_specificity_without_positives_is_none():
    result = sensitivity_at_specificity(np.zeros(5), np.linspace(0, 1, 5), 0.9)
    assert result["sensitivity"] is None and result["threshold"] is None


def test_ece_by_hand():
    # Four images at confidence 0.9 (3 right), two at 0.6 (both right):
    # 4/6 * |0.75 - 0.9| + 2/6 * |1.0 - 0.6| = 0.1 + 0.1333...
    y = np.array([0, 0, 0, 1, 2, 2])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.9, 0.05, 0.05],
            [0.9, 0.05, 0.05],
            [0.9, 0.05, 0.05],
            [0.1, 0.3, 0.6],
            [0.1, 0.3, 0.6],
        ]
    )
    assert expected_calibration_error(y, probs) == pytest.approx(0.1 + 0.4 / 3)
    table = reliability_table(y, probs)
    assert len(table) == 15 and table["count"].sum() == 6
    filled = table[table["count"] > 0]
    assert filled["count"].tolist() == [2, 4]
    assert filled["accuracy"].tolist() == pytest.approx([1.0, 0.75])
    assert filled["confidence"].tolist() == pytest.approx([0.6, 0.9])


def test_perfect_confident_predictions_have_zero_ece():
    y = np.array([0, 1, 2])
    assert expected_calibration_error(y, np.eye(3)) == pytest.approx(0.0)


def test_class_absent_from_labels_gives_none_not_a_crash(random_predictions):
    y, probs = random_predictions
    y = np.where(y == CLASSES.index("df"), 0, y)
    m = evaluation_metrics(y, probs)
    assert m["per_class"]["df"]["roc_auc"] is None
    assert m["per_class"]["df"]["average_precision"] is None
    assert m["per_class"]["df"]["support"] == 0
    others = [v["roc_auc"] for c, v in m["per_class"].items() if c != "df"]
    assert m["macro_roc_auc"] == pytest.approx(np.mean(others))
    table = per_class_table(m)
    assert math.isnan(table.loc["df", "roc_auc"]) and table.loc["df", "support"] == 0


def test_no_melanoma_gives_none_operating_points(random_predictions):
    y, probs = random_predictions
    y = np.where(y == CLASSES.index("mel"), 0, y)
    mel = evaluation_metrics(y, probs)["melanoma"]
    assert mel["sensitivity"] is None
    assert mel["sensitivity_at_specificity"]["0.90"]["sensitivity"] is None
    json.dumps(mel, allow_nan=False)


def test_metrics_in_range_and_json_serialisable(random_predictions):
    y, probs = random_predictions
    m = evaluation_metrics(y, probs)
    text = json.dumps(m, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text) == m
    assert m["n_images"] == 300
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_roc_auc", "ece"):
        assert isinstance(m[key], float) and 0 <= m[key] <= 1, key
    assert m["macro_roc_auc"] > 0.7  # the predictions were built better than chance
    for values in m["per_class"].values():
        for key in ("precision", "recall", "f1", "roc_auc", "average_precision"):
            assert 0 <= values[key] <= 1
    assert sum(v["support"] for v in m["per_class"].values()) == 300
    assert np.sum(m["confusion_matrix"]) == 300
    for target, point in m["melanoma"]["sensitivity_at_specificity"].items():
        assert point["specificity"] >= float(target)
        assert 0 <= point["sensitivity"] <= 1 and 0 <= point["threshold"] <= 1
    assert list(per_class_table(m).index) == list(CLASSES)


def test_wrong_shapes_are_rejected():
    with pytest.raises(ValueError, match="columns"):
        evaluation_metrics(np.array([0, 1]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="N x K"):
        evaluation_metrics(np.array([0, 1, 2]), np.full((2, 7), 1 / 7))


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=1.5, size=(4000, 7))
    true_probs = softmax(logits, axis=1)
    y = np.array([rng.choice(7, p=p) for p in true_probs])
    overconfident = softmax(3 * logits, axis=1)
    temperature = fit_temperature(overconfident, y)
    assert temperature == pytest.approx(3, rel=0.15)
    # Same answer from logits as from probabilities.
    assert fit_temperature(3 * logits, y) == pytest.approx(temperature, rel=1e-3)
    calibrated = apply_temperature(overconfident, temperature)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1)
    np.testing.assert_array_equal(calibrated.argmax(1), overconfident.argmax(1))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, overconfident)


def test_the_screening_threshold_is_the_highest_that_reaches_the_sensitivity():
    from ham_utils.evaluation.scoring import operating_point, threshold_for_sensitivity

    positive = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.6, 0.3, 0.1, 0.0])
    # 9 of 10 positives needed: the 9th highest positive score.
    assert threshold_for_sensitivity(positive, scores, 0.9) == 0.1
    assert threshold_for_sensitivity(positive, scores, 0.85) == 0.1  # ceil(8.5) = 9
    assert threshold_for_sensitivity(positive, scores, 0.8) == 0.2
    assert threshold_for_sensitivity(~np.ones(3, bool), np.zeros(3), 0.9) is None
    point = operating_point(positive, scores, 0.1)
    assert point["sensitivity"] == 0.9 and point["specificity"] == 0.25  # 0.6, 0.3, 0.1 flagged
    assert point["flagged_per_100"] == pytest.approx(100 * 12 / 14)


def test_risk_coverage_keeps_the_most_confident_first():
    from ham_utils.evaluation.scoring import risk_coverage, selective_summary

    # Four confident right answers, then two unsure wrong ones.
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.85, 0.15], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
    curve = risk_coverage(y, probs)
    assert curve["coverage"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    assert curve["accuracy"].tolist() == pytest.approx([1, 1, 1, 1, 0.8, 4 / 6])
    assert curve["balanced_accuracy"].iloc[-1] == pytest.approx(4 / 6)
    summary = selective_summary(y, probs)
    assert summary["at_coverage"]["0.80"]["accuracy"] == pytest.approx(0.8)  # 5 of 6 kept
    assert summary["aurc"] == pytest.approx(np.mean([0, 0, 0, 0, 0.2, 1 / 3]))
