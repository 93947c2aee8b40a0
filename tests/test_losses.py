import keras
import numpy as np
import pytest

from ham_utils.model.losses import (
    class_counts,
    class_weights,
    focal_alpha,
    make_loss,
    sample_weights_for,
)

COUNTS = [10, 30, 60]  # N = 100, K = 3


def test_balanced_weights_are_n_over_k_times_class_count():
    # 100 / (3 * 10), 100 / (3 * 30), 100 / (3 * 60); their sample mean is already 1.
    np.testing.assert_allclose(class_weights(COUNTS), [10 / 3, 10 / 9, 5 / 9])


def test_power_sharpens_the_weights_and_the_sample_mean_stays_one():
    weights = class_weights(COUNTS, power=1.5)
    raw = np.array([10 / 3, 10 / 9, 5 / 9]) ** 1.5
    np.testing.assert_allclose(weights, raw * 100 / (10 * raw[0] + 30 * raw[1] + 60 * raw[2]))
    assert weights[0] / weights[2] == pytest.approx(6**1.5)  # (60 / 10) ** 1.5
    assert np.dot(COUNTS, weights) / 100 == pytest.approx(1.0)


def test_cap_comes_before_the_rescale():
    # raw 10/3, 10/9, 5/9 -> capped 2, 10/9, 5/9 -> sample mean 13/15 -> divided by it.
    np.testing.assert_allclose(class_weights(COUNTS, cap=2.0), [30 / 13, 50 / 39, 25 / 39])


def test_a_class_without_samples_is_an_error_that_names_it():
    counts = [5, 9, 20, 0, 21, 120, 4]
    with pytest.raises(ValueError, match=r"\['df'\].*no training samples"):
        class_weights(counts)


def test_class_counts_keep_empty_classes():
    np.testing.assert_array_equal(class_counts([0, 2, 2, 6]), [1, 0, 2, 0, 0, 0, 1])


def test_focal_alpha_modes():
    np.testing.assert_allclose(focal_alpha(COUNTS, "inverse_frequency"), class_weights(COUNTS))
    # 1/sqrt(25) is twice 1/sqrt(100); 25 * 2a + 100 * a = 125 gives a = 5/6.
    np.testing.assert_allclose(focal_alpha([25, 100], "balanced_sqrt"), [5 / 3, 5 / 6])
    np.testing.assert_allclose(focal_alpha(COUNTS, [0.2, 0.3, 0.5]), [0.2, 0.3, 0.5])


@pytest.mark.parametrize("bad", ["sqrt", [1.0, 2.0], [1.0, 0.0, 1.0]])
def test_focal_alpha_rejects_unknown_modes_and_bad_lists(bad):
    with pytest.raises(ValueError):
        focal_alpha(COUNTS, bad)


def _focal_by_hand(label: int, probs: np.ndarray, gamma: float, alpha: float = 1.0) -> float:
    p = probs[label]
    return alpha * (1 - p) ** gamma * -np.log(p)


PROBS = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], dtype="float32")
ONE_HOT = np.array([[0, 1, 0], [1, 0, 0]], dtype="float32")


def test_focal_loss_equals_the_hand_computed_value():
    loss = make_loss("focal", gamma=2.0, num_classes=3)
    expected = np.mean([_focal_by_hand(1, PROBS[0], 2.0), _focal_by_hand(0, PROBS[1], 2.0)])
    assert float(loss(ONE_HOT, PROBS)) == pytest.approx(expected, rel=1e-5)


def test_focal_alpha_list_weights_each_sample_by_its_class():
    alpha = [0.5, 2.0, 3.0]
    loss = make_loss("focal", gamma=2.0, alpha=alpha, num_classes=3)
    for i, label in enumerate((1, 0)):
        value = float(loss(ONE_HOT[i : i + 1], PROBS[i : i + 1]))
        expected = _focal_by_hand(label, PROBS[i], 2.0, alpha[label])
        assert value == pytest.approx(expected, rel=1e-5)


def test_focal_loss_on_a_soft_label_mixes_the_class_terms():
    alpha = [0.5, 2.0, 3.0]
    loss = make_loss("focal", gamma=1.0, alpha=alpha, num_classes=3)
    soft = np.array([[0.25, 0.75, 0.0]], dtype="float32")
    expected = 0.25 * _focal_by_hand(0, PROBS[0], 1.0, 0.5) + 0.75 * _focal_by_hand(
        1, PROBS[0], 1.0, 2.0
    )
    assert float(loss(soft, PROBS[:1])) == pytest.approx(expected, rel=1e-5)


def test_crossentropy_with_label_smoothing():
    loss = make_loss("crossentropy", label_smoothing=0.3)
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    smoothed = ONE_HOT[0] * 0.7 + 0.1  # 0.3 spread over 3 classes
    expected = -np.sum(smoothed * np.log(PROBS[0]))
    assert float(loss(ONE_HOT[:1], PROBS[:1])) == pytest.approx(expected, rel=1e-5)


def test_make_loss_rejects_what_it_cannot_use():
    with pytest.raises(ValueError, match="one of"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="sample_weights_for"):
        make_loss("crossentropy", alpha=[1.0] * 7)
    with pytest.raises(ValueError, match="7 values"):
        make_loss("focal", alpha=[1.0, 2.0])


def test_sample_weights_of_soft_labels_mix_the_class_weights():
    labels = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]], dtype="float32")
    weights = keras.ops.convert_to_numpy(sample_weights_for(labels, [1.0, 2.0, 3.0]))
    # An argmax lookup (Keras' class_weight) would give 1.0 to the first sample.
    np.testing.assert_allclose(weights, [0.6 * 1.0 + 0.4 * 2.0, 3.0])
