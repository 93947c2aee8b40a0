"""Training-time augmentation: one random affine resampling, Keras colour layers, MixUp and
CutMix.

Images are float pixels in 0..255 throughout (the models rescale inside). Everything is Keras 3,
so it runs on TensorFlow (also inside a ``tf.data`` map) and eagerly on JAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import keras
from keras import ops

VALUE_RANGE = (0, 255)
# Augmentation runs in float32 whatever the global (mixed) precision policy: in bfloat16,
# pixels near 255 would be rounded to whole steps.
DTYPE = "float32"

T = TypeVar("T")


def _layer_seed(seed: int | None, offset: int) -> int | None:
    """A distinct seed per layer, so that seeded layers do not draw the same numbers."""
    return None if seed is None else seed + offset


# Our own layer because Keras 3.15 has no combined random-affine layer (4 layers = 4 resamplings).
@keras.saving.register_keras_serializable(package="ham_utils")
class RandomAffine(keras.layers.Layer):
    """Random flips, rotation, zoom and shift of 0..255 image batches, resampled once.

    Keras' RandomFlip, RandomRotation, RandomZoom and RandomTranslation each resample the whole
    batch; this layer composes their transforms per image into a single matrix and makes one
    bilinear ``affine_transform`` with reflection fill (about a third of their cost).

    Per image it draws a horizontal and a vertical flip (independent coins), an angle in
    ±``rotation`` of a full turn, a zoom factor in 1 ± ``zoom`` (above 1 zooms out, as in
    Keras' RandomZoom) and a shift in ±``shift`` of the width and of the height: the same
    transform as those four Keras layers applied in that order. With rotation, zoom and shift
    0, flips are exact mirror images. Float32 in, float32 out; ``training=False`` returns the
    images unchanged. Usable inside a ``tf.data`` map on the TensorFlow backend and eagerly
    on JAX.
    """

    def __init__(
        self,
        flip: bool = True,
        rotation: float = 0.0,
        zoom: float = 0.0,
        shift: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", DTYPE)
        super().__init__(**kwargs)
        for name, value in (("rotation", rotation), ("zoom", zoom), ("shift", shift)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if zoom >= 1:
            raise ValueError(f"zoom must be < 1, got {zoom}")
        self.flip = bool(flip)
        self.rotation = float(rotation)
        self.zoom = float(zoom)
        self.shift = float(shift)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights, only the random seed state

    def transform_matrices(self, batch_size: Any, height: Any, width: Any) -> Any:
        """``(batch_size, 8)`` random transforms for ``affine_transform``: each maps an
        output pixel (x, y) to the input point it samples, x' = a0 x + a1 y + a2 and
        y' = b0 x + b1 y + b2 (pixel centres at whole coordinates)."""
        u = keras.random.uniform((batch_size, 6), seed=self.generator)
        one = ops.ones((batch_size,), "float32")
        zero = ops.zeros((batch_size,), "float32")
        # Sampling map of flip(rotate(zoom(shift(image)))), about the image centre c:
        # p' = c + s * F @ R @ (p - c - t).
        flip_x = ops.where(u[:, 0] < 0.5, -one, one) if self.flip else one
        flip_y = ops.where(u[:, 1] < 0.5, -one, one) if self.flip else one
        if self.rotation:
            angle = (2.0 * u[:, 2] - 1.0) * (self.rotation * 2.0 * math.pi)
            cos, sin = ops.cos(angle), ops.sin(angle)
        else:
            cos, sin = one, zero
        scale = 1.0 + (2.0 * u[:, 3] - 1.0) * self.zoom if self.zoom else one
        width = ops.cast(width, "float32")
        height = ops.cast(height, "float32")
        if self.shift:
            shift_x = (2.0 * u[:, 4] - 1.0) * (self.shift * width)
            shift_y = (2.0 * u[:, 5] - 1.0) * (self.shift * height)
        else:
            shift_x, shift_y = zero, zero
        a0, a1 = scale * flip_x * cos, -scale * flip_x * sin
        b0, b1 = scale * flip_y * sin, scale * flip_y * cos
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        a2 = cx - a0 * (cx + shift_x) - a1 * (cy + shift_y)
        b2 = cy - b0 * (cx + shift_x) - b1 * (cy + shift_y)
        return ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)

    def call(self, images, training=True):
        images = ops.cast(images, "float32")
        if not training or not (self.flip or self.rotation or self.zoom or self.shift):
            return images
        unbatched = len(images.shape) == 3
        if unbatched:
            images = images[None]
        shape = ops.shape(images)
        matrices = self.transform_matrices(shape[0], shape[1], shape[2])
        out = ops.image.affine_transform(
            images,
            matrices,
            interpolation="bilinear",
            fill_mode="reflect",
            data_format="channels_last",
        )
        return out[0] if unbatched else out

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, images, training=True):
        return keras.KerasTensor(images.shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "flip": self.flip,
            "rotation": self.rotation,
            "zoom": self.zoom,
            "shift": self.shift,
            "seed": self.seed,
        }


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
    out. The geometric part (flips, rotation, zoom, shift) is one :class:`RandomAffine`, which
    resamples each image once and fills with reflection, so no black corners appear.

    The result is a :class:`keras.layers.Pipeline` rather than a ``Sequential``: it is called the
    same way (``augmenter(images, training=True)``), but stays usable inside ``tf.data`` on the
    TensorFlow backend, because it does not convert its inputs there. (Eagerly it runs on any
    backend; :class:`RandomAffine` uses ``keras.ops``, so a ``tf.data`` map needs TensorFlow.)
    """
    layers: list[keras.layers.Layer] = []
    if flip or rotation or zoom or shift:
        layers.append(
            RandomAffine(flip, rotation, zoom, shift, seed=_layer_seed(seed, 0), dtype=DTYPE)
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


def _branch(pred: Any, true_fn: Callable[[], T], false_fn: Callable[[], T]) -> Callable[[], T]:
    """A function that runs only ``true_fn`` or ``false_fn``, as the scalar ``pred`` says.

    On TensorFlow it is ``ops.cond`` (``tf.cond``: one branch runs, eagerly or inside a
    ``tf.data`` graph). Elsewhere (JAX, eager) a Python ``if`` on the concrete value: a
    ``lax.cond`` would trace the random layers' seed updates inside its branches.
    """
    if keras.backend.backend() == "tensorflow":
        return lambda: ops.cond(pred, true_fn, false_fn)
    return lambda: true_fn() if bool(pred) else false_fn()


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
        # One draw per batch picks the branch, and only that branch is computed.
        draws = keras.random.uniform((2,), seed=self.choice_seed)
        use_mixup = draws[0] < self.mixup_prob
        use_cutmix = ops.logical_and(ops.logical_not(use_mixup), draws[1] < self.cutmix_prob)

        def unchanged():
            return images, labels

        def mixed(layer):
            def apply():
                out = layer({"images": images, "labels": labels}, training=True)
                return ops.cast(out["images"], "float32"), ops.cast(out["labels"], "float32")

            return apply

        result = unchanged
        if self.cutmix is not None:
            result = _branch(use_cutmix, mixed(self.cutmix), result)
        if self.mixup is not None:
            result = _branch(use_mixup, mixed(self.mixup), result)
        return result()

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
