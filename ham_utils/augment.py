"""Training-time augmentation: Keras random image layers, MixUp and CutMix.

Images are float pixels in 0..255 throughout (the models rescale inside). Everything is Keras 3,
so it runs on TensorFlow (also inside a ``tf.data`` map) and eagerly on JAX.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

VALUE_RANGE = (0, 255)
# Augmentation runs in float32 whatever the global (mixed) precision policy: in bfloat16,
# pixels near 255 would be rounded to whole steps.
DTYPE = "float32"


def _layer_seed(seed: int | None, offset: int) -> int | None:
    """A distinct seed per layer, so that seeded layers do not draw the same numbers."""
    return None if seed is None else seed + offset


def build_augmenter(
    flip: bool = True,
    rotation: float = 0.25,
    zoom: float = 0.15,
    shift: float = 0.1,
    brightness: float = 0.2,
    contrast: float = 0.2,
    rand_augment: bool = False,
    seed: int | None = None,
) -> keras.layers.Pipeline:
    """Random geometric and colour augmentation of 0..255 image batches.

    ``rotation`` is a fraction of a full turn (0.25: up to ±90°), ``zoom`` and ``shift`` are
    fractions of the image size, ``brightness`` and ``contrast`` Keras factors. Flips are
    horizontal and vertical: a dermoscopy image has no up or down. Zero or False leaves a layer
    out. Geometric layers fill with reflection, so no black corners appear.

    The result is a :class:`keras.layers.Pipeline` rather than a ``Sequential``: it is called the
    same way (``augmenter(images, training=True)``), but stays usable inside ``tf.data`` on any
    backend, because it does not convert its inputs to backend tensors there.
    """
    layers: list[keras.layers.Layer] = []
    if flip:
        # Two layers: Keras' "horizontal_and_vertical" mode draws one coin for both axes, so it
        # only ever rotates by 180 degrees and never mirrors an image.
        layers.append(keras.layers.RandomFlip("horizontal", seed=_layer_seed(seed, 0), dtype=DTYPE))
        layers.append(keras.layers.RandomFlip("vertical", seed=_layer_seed(seed, 7), dtype=DTYPE))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=_layer_seed(seed, 1), dtype=DTYPE))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=_layer_seed(seed, 2), dtype=DTYPE))
    if shift:
        layers.append(
            keras.layers.RandomTranslation(shift, shift, seed=_layer_seed(seed, 3), dtype=DTYPE)
        )
    if brightness:
        layers.append(
            keras.layers.RandomBrightness(
                brightness, value_range=VALUE_RANGE, seed=_layer_seed(seed, 4), dtype=DTYPE
            )
        )
    if contrast:
        layers.append(
            keras.layers.RandomContrast(
                contrast, value_range=VALUE_RANGE, seed=_layer_seed(seed, 5), dtype=DTYPE
            )
        )
    if rand_augment:
        layers.append(
            keras.layers.RandAugment(
                value_range=VALUE_RANGE, seed=_layer_seed(seed, 6), dtype=DTYPE
            )
        )
    return keras.layers.Pipeline(layers, name="augmenter")


def augmenter_from_params(params: Any) -> keras.layers.Pipeline:
    """:func:`build_augmenter` with the augmentation settings of a :class:`Params`."""
    return build_augmenter(
        flip=params.flip,
        rotation=params.rotation,
        zoom=params.zoom,
        shift=params.shift,
        brightness=params.brightness,
        contrast=params.contrast,
        rand_augment=params.rand_augment,
        seed=params.seed,
    )


@keras.saving.register_keras_serializable(package="ham_utils")
class PixelExactCutMix(keras.layers.CutMix):
    """Keras CutMix whose label weight is the fraction of pixels really pasted.

    Keras 3's CutMix mixes the labels by the area of the sampled box in continuous
    coordinates, but pastes whole pixels, so on small images the label is off by up to one
    pixel row and column (several percent at 32 px). Here the weight comes from the pasted mask.
    """

    def transform_labels(self, labels, transformation, training=True):
        if not training or transformation is None:
            return labels
        backend = self.backend
        masks = backend.cast(transformation["batch_masks"], labels.dtype)
        pasted = backend.numpy.mean(masks, axis=(1, 2, 3))[:, None]
        other = backend.numpy.take(labels, transformation["permutation_order"], axis=0)
        return (1.0 - pasted) * labels + pasted * other


@keras.saving.register_keras_serializable(package="ham_utils")
class MixUpCutMix(keras.layers.Layer):
    """Per batch: MixUp with probability ``mixup_prob``, otherwise CutMix with probability
    ``cutmix_prob``, otherwise the batch unchanged.

    So P(MixUp) = mixup_prob and P(CutMix) = (1 - mixup_prob) * cutmix_prob. Call it on
    ``(images, one_hot_labels)``; it returns float32 ``(images, labels)`` with labels that sum
    to 1. Usable as ``dataset.map(MixUpCutMix(...))`` on the TensorFlow backend and eagerly on
    numpy batches on JAX. ``mixup_alpha`` and ``cutmix_alpha`` are the Beta(alpha, alpha)
    parameters of the mixing weight (0 < alpha <= 1 in Keras' layers).
    """

    def __init__(
        self,
        mixup_prob: float = 0.0,
        mixup_alpha: float = 0.2,
        cutmix_prob: float = 0.0,
        cutmix_alpha: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", DTYPE)
        super().__init__(**kwargs)
        for name, prob in (("mixup_prob", mixup_prob), ("cutmix_prob", cutmix_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {prob}")
        self.mixup_prob = float(mixup_prob)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_prob = float(cutmix_prob)
        self.cutmix_alpha = float(cutmix_alpha)
        self.seed = seed
        self.choice_seed = keras.random.SeedGenerator(seed)
        # Layers with probability 0 are not built, so they cost nothing per batch.
        self.mixup = (
            keras.layers.MixUp(alpha=mixup_alpha, seed=_layer_seed(seed, 1), dtype=DTYPE)
            if mixup_prob
            else None
        )
        self.cutmix = (
            PixelExactCutMix(
                factor=(cutmix_alpha, cutmix_alpha), seed=_layer_seed(seed, 2), dtype=DTYPE
            )
            if cutmix_prob
            else None
        )
        self.built = True  # no weights: the sublayers only hold random seed state

    def call(self, images, labels, training=True):
        images = ops.cast(images, "float32")
        labels = ops.cast(labels, "float32")
        if not training:
            return images, labels
        # One draw per batch picks the branch. Both branches are computed and one is selected
        # with `where`: it is the same code in a tf.data graph and eagerly on JAX.
        draws = keras.random.uniform((2,), seed=self.choice_seed)
        use_mixup = draws[0] < self.mixup_prob
        use_cutmix = ops.logical_and(ops.logical_not(use_mixup), draws[1] < self.cutmix_prob)
        if self.cutmix is not None:
            cut = self.cutmix({"images": images, "labels": labels}, training=True)
            images = ops.where(use_cutmix, ops.cast(cut["images"], "float32"), images)
            labels = ops.where(use_cutmix, ops.cast(cut["labels"], "float32"), labels)
        if self.mixup is not None:
            mixed = self.mixup({"images": images, "labels": labels}, training=True)
            images = ops.where(use_mixup, ops.cast(mixed["images"], "float32"), images)
            labels = ops.where(use_mixup, ops.cast(mixed["labels"], "float32"), labels)
        return images, labels

    def compute_output_spec(self, images, labels, training=True):
        return (
            keras.KerasTensor(images.shape, dtype="float32"),
            keras.KerasTensor(labels.shape, dtype="float32"),
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "mixup_prob": self.mixup_prob,
            "mixup_alpha": self.mixup_alpha,
            "cutmix_prob": self.cutmix_prob,
            "cutmix_alpha": self.cutmix_alpha,
            "seed": self.seed,
        }
