"""The in-training balanced accuracy, which selects ``best.keras``, is scikit-learn's."""

import itertools
import warnings

import keras
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from ham_utils.config import CLASSES
from ham_utils.model.metrics import BalancedAccuracy, training_metrics

K = len(CLASSES)
ABSENT = 5  # a class that no label of the epoch has (it is still predicted sometimes)


def sklearn_balanced_accuracy(
    labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """``balanced_accuracy_score``, quiet about classes predicted but never true."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(labels, predicted, sample_weight=weights))


def epoch(seed: int, n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels without class ABSENT, and noisy scores that predict every class."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(K) if c != ABSENT]
    labels = rng.choice(present, n, p=[0.5, 0.2, 0.1, 0.08, 0.07, 0.05])
    scores = rng.random((n, K)) + 1.5 * np.eye(K)[labels] * rng.random((n, 1))
    return labels, scores


def batches(n: int, sizes: tuple[int, ...] = (32, 7, 51)) -> list[slice]:
    """Uneven batches covering ``range(n)``."""
    bounds = np.cumsum((0, *sizes))
    assert bounds[-1] >= n
    return [slice(a, min(b, n)) for a, b in itertools.pairwise(bounds)]


def metric_over_batches(
    labels: np.ndarray,
    scores: np.ndarray,
    y_true: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> float:
    metric = BalancedAccuracy()
    y_true = np.eye(K, dtype="float32")[labels] if y_true is None else y_true
    for part in batches(len(labels)):
        weight = None if weights is None else weights[part]
        metric.update_state(y_true[part], scores[part].astype("float32"), sample_weight=weight)
    return float(metric.result())


def test_equals_sklearn_over_uneven_batches_with_absent_classes():
    labels, scores = epoch(0)
    small_batch = batches(len(labels))[1]
    assert len(set(labels[small_batch])) < K - 1  # a class absent from one batch
    assert ABSENT in set(scores.argmax(axis=1)) - set(labels)  # predicted, never true
    expected = sklearn_balanced_accuracy(labels, scores.argmax(axis=1))
    assert metric_over_batches(labels, scores) == pytest.approx(expected, abs=1e-6)
    assert 0.2 < expected < 0.9  # neither trivial nor perfect


def test_reset_state_starts_the_next_epoch_afresh():
    metric = BalancedAccuracy()
    first, second = epoch(1), epoch(2)
    for labels, scores in (first, second):
        metric.reset_state()
        metric.update_state(np.eye(K)[labels], scores)
    expected = sklearn_balanced_accuracy(second[0], second[1].argmax(axis=1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)


def test_mixed_labels_count_as_their_largest_class():
    """MixUp/CutMix labels: the true class is the larger of the two mixed ones."""
    labels, scores = epoch(3)
    rng = np.random.default_rng(3)
    partners = rng.permutation(labels)
    lam = rng.uniform(0.05, 0.95, (len(labels), 1))
    lam[np.abs(lam - 0.5) < 0.01] = 0.6  # no ties
    mixed = lam * np.eye(K)[labels] + (1 - lam) * np.eye(K)[partners]
    largest = mixed.argmax(axis=1)
    assert (largest != labels).any() and (largest == labels).any()
    expected = sklearn_balanced_accuracy(largest, scores.argmax(axis=1))
    got = metric_over_batches(labels, scores, y_true=mixed.astype("float32"))
    assert got == pytest.approx(expected, abs=1e-6)


def test_sample_weights_count_as_in_sklearn():
    """The training stream passes class weights of (mixed) labels as sample weights."""
    labels, scores = epoch(4)
    weights = np.random.default_rng(4).uniform(0.1, 3.0, len(labels)).astype("float32")
    expected = sklearn_balanced_accuracy(labels, scores.argmax(axis=1), weights)
    unweighted = sklearn_balanced_accuracy(labels, scores.argmax(axis=1))
    assert abs(expected - unweighted) > 1e-3  # the weights make a difference here
    assert metric_over_batches(labels, scores, weights=weights) == pytest.approx(expected, abs=1e-5)


def test_the_monitored_validation_value_is_sklearns_on_the_models_predictions():
    """``val_balanced_accuracy`` from ``fit`` (what RunCheckpoint selects on) on uneven
    batches equals scikit-learn's score of the model's own predictions."""
    from ham_utils.config import load_params

    assert load_params(None, {}).monitor == "val_balanced_accuracy"
    assert "balanced_accuracy" in [m.name for m in training_metrics()]
    rng = np.random.default_rng(5)
    x = rng.normal(size=(61, 8)).astype("float32")
    labels = rng.choice([c for c in range(K) if c != ABSENT], 61)
    y = np.eye(K, dtype="float32")[labels]
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(K, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=training_metrics())
    history = model.fit(x, y, batch_size=16, epochs=1, validation_data=(x, y), verbose=0)
    predicted = model.predict(x, batch_size=16, verbose=0).argmax(axis=1)
    expected = sklearn_balanced_accuracy(labels, predicted)
    assert len(set(predicted)) > 2  # the predictions are not one class
    assert history.history["val_balanced_accuracy"][0] == pytest.approx(expected, abs=1e-6)


def test_config_round_trip():
    again = BalancedAccuracy.from_config(BalancedAccuracy(num_classes=3, name="ba").get_config())
    assert again.num_classes == 3 and again.name == "ba"
