"""Losses and class weighting for the imbalanced HAM10000 classes.

Everything here is backend-portable Keras 3 (``keras.ops``), so it runs on TensorFlow and JAX.
Class counts are always given in the order of :data:`ham_utils.config.CLASSES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from ham_utils.config import CLASSES, FOCAL_ALPHA_MODES

LOSS_NAMES: tuple[str, ...] = ("focal", "crossentropy")


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Number of samples of each class in integer ``labels`` (zeros included)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def _class_names(num_classes: int) -> Sequence[str]:
    return CLASSES if num_classes == len(CLASSES) else [str(i) for i in range(num_classes)]


def _checked_counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"counts must be one number per class, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"class counts cannot be negative, got {counts.tolist()}")
    empty = [name for name, n in zip(_class_names(counts.size), counts, strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no training samples, so their weight is undefined; "
            "check the split (every class needs training images) or drop the class"
        )
    return counts


def class_weights(
    counts: Sequence[int] | np.ndarray, power: float = 1.0, cap: float | None = None
) -> np.ndarray:
    """Per-class loss weights from training-set class counts.

    The raw weight of class c is ``(N / (K * n_c)) ** power``: ``power=1`` is the usual
    "balanced" weighting, ``power=1.5`` a more aggressive one, ``power=0.5`` a milder one.
    The order is: raw weights, then ``cap`` (clips the raw weights), then a rescale so that the
    weighted sample mean over the training set, ``sum(n_c * w_c) / N``, is 1. The rescale keeps
    the loss on the scale of an unweighted run, so learning rates carry over; it also means a
    capped weight can end slightly above ``cap``, while the capped ratios between classes stay.

    scikit-learn's ``compute_class_weight("balanced")`` is the ``power=1`` case from label
    arrays; the power, the cap and the rescale are not there, so the formula is written out.
    """
    counts = _checked_counts(counts)
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    if cap is not None and cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    total = counts.sum()
    weights = (total / (counts.size * counts)) ** power
    if cap is not None:
        weights = np.minimum(weights, cap)
    return weights * total / np.sum(counts * weights)


def focal_alpha(
    counts: Sequence[int] | np.ndarray,
    mode: str | Sequence[float] = "inverse_frequency",
) -> np.ndarray:
    """Per-class alpha for the focal loss.

    ``"inverse_frequency"`` gives alpha_c proportional to ``1 / n_c``, ``"balanced_sqrt"``
    proportional to ``1 / sqrt(n_c)``. Both are normalised like :func:`class_weights`: the mean
    alpha over the training samples is 1. Keras' focal loss multiplies the loss by alpha, so this
    keeps the loss (and the learning rate that suits it) on the scale of the unweighted loss,
    unlike the textbook ``alpha=0.25``, which only shrinks a multi-class loss. A list of numbers
    is taken as given (one positive number per class), with no normalisation.
    """
    if isinstance(mode, str):
        if mode not in FOCAL_ALPHA_MODES:
            raise ValueError(
                f"focal alpha mode must be one of {FOCAL_ALPHA_MODES} or a list of numbers, "
                f"got {mode!r}"
            )
        return class_weights(counts, power=1.0 if mode == "inverse_frequency" else 0.5)
    alpha = np.asarray(mode, dtype=np.float64)
    num_classes = len(_checked_counts(counts))
    if alpha.shape != (num_classes,) or np.any(alpha <= 0):
        raise ValueError(
            f"a focal alpha list needs {num_classes} positive numbers (one per class in the "
            f"order {list(_class_names(num_classes))}), got {list(mode)}"
        )
    return alpha


def make_loss(
    name: str = "focal",
    gamma: float = 2.0,
    alpha: Sequence[float] | np.ndarray | None = None,
    label_smoothing: float = 0.0,
    num_classes: int = len(CLASSES),
) -> keras.losses.Loss:
    """The training loss for a model whose output is a softmax over ``num_classes``.

    ``"focal"`` is :class:`keras.losses.CategoricalFocalCrossentropy`. ``alpha=None`` means no
    class weighting (alpha 1, not Keras' default 0.25, which would only scale the loss down).
    A per-class alpha list is applied per class by Keras 3: each sample's term is weighted by
    the alpha of its (soft) label's classes. ``"crossentropy"`` is plain categorical
    crossentropy; class balance then comes from :func:`sample_weights_for`.
    Both take soft (MixUp/CutMix) labels.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    if name == "crossentropy":
        if alpha is not None:
            raise ValueError(
                "alpha only applies to the focal loss; for crossentropy, weight the classes "
                "with sample_weights_for(labels, class_weights(...))"
            )
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if name != "focal":
        raise ValueError(f"loss must be one of {LOSS_NAMES}, got {name!r}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha is None:
        alpha_value: float | list[float] = 1.0
    else:
        alpha_value = [float(a) for a in np.asarray(alpha, dtype=np.float64)]
        if len(alpha_value) != num_classes:
            raise ValueError(f"alpha needs {num_classes} values, got {len(alpha_value)}")
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=alpha_value, gamma=gamma, label_smoothing=label_smoothing
    )


def sample_weights_for(labels: Any, class_weights: Any) -> Any:
    """Per-sample weights ``labels @ class_weights`` for one-hot or soft labels.

    Keras' own ``class_weight`` argument of ``fit`` looks up the weight of ``argmax(label)``,
    which is wrong for MixUp/CutMix labels: a 60/40 mix of nv and mel would get nv's weight
    only. The dot product gives the label-weighted mix instead (and equals the lookup for
    one-hot labels). Works in a tf.data map on the TensorFlow backend and eagerly on JAX.
    """
    labels = ops.cast(labels, "float32")
    return ops.matmul(labels, ops.cast(class_weights, "float32"))
