"""Balanced metrics during training.

Accuracy favours the majority class (always answering ``nv`` scores ~0.67 on HAM10000), so
training is monitored and checkpoints are selected on balanced accuracy (mean per-class
recall, the ISIC 2018 metric) or macro F1. Keras ships macro F1 (``keras.metrics.F1Score``)
but no balanced accuracy; :class:`BalancedAccuracy` fills that gap with ``keras.ops`` only,
so it runs on every backend.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from ham_utils.config import CLASSES


@keras.saving.register_keras_serializable(package="ham_utils")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean over classes of recall (classes absent from the data seen are left out).

    Labels may be one-hot or mixed (MixUp/CutMix): the true class is the largest label.
    Sample weights count as in ``sklearn.metrics.balanced_accuracy_score``, whose value this
    is on the same labels (tests/test_metrics.py).
    """

    def __init__(self, num_classes: int = len(CLASSES), name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.hits = self.add_variable(shape=(num_classes,), initializer="zeros", name="hits")
        self.support = self.add_variable(shape=(num_classes,), initializer="zeros", name="support")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        true = ops.one_hot(ops.argmax(y_true, axis=-1), self.num_classes, dtype=self.dtype)
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes, dtype=self.dtype)
        if sample_weight is not None:  # the class weights of the training stream
            true = true * ops.reshape(ops.cast(sample_weight, self.dtype), (-1, 1))
        self.support.assign_add(ops.sum(true, axis=0))
        self.hits.assign_add(ops.sum(true * predicted, axis=0))

    def result(self) -> Any:
        present = ops.cast(self.support > 0, self.dtype)
        recall = ops.divide_no_nan(self.hits, self.support)
        return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

    def reset_state(self) -> None:
        self.hits.assign(ops.zeros((self.num_classes,), dtype=self.dtype))
        self.support.assign(ops.zeros((self.num_classes,), dtype=self.dtype))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="ham_utils")
class MacroF1(keras.metrics.F1Score):
    """Keras' macro F1, with its variables created when it is made.

    ``F1Score`` creates them at its first update, which falls inside the first trace of the
    train step; TensorFlow then traces the whole step a second time (tens of seconds on a
    CPU, for every phase and every resumed run). One eager update here avoids that.
    """

    def __init__(self, num_classes: int = len(CLASSES), name: str = "macro_f1", **kwargs):
        kwargs.setdefault("average", "macro")
        super().__init__(name=name, **kwargs)
        blank = ops.zeros((1, num_classes))
        self.update_state(blank, blank)
        self.reset_state()


def training_metrics() -> list[keras.metrics.Metric]:
    """The metrics compiled into every model: accuracy, balanced accuracy, macro F1."""
    return [keras.metrics.CategoricalAccuracy(name="accuracy"), BalancedAccuracy(), MacroF1()]
