"""Backbone registry, classification head, freezing and unfreezing.

Every model takes float RGB pixels in 0..255: EfficientNets rescale inside, and ResNet50,
Xception and EfficientNet-Lite get their ImageNet preprocessing as a layer inside the model.
The backbone's layers are part of the model itself (not a nested sub-model), so Grad-CAM can
reach the last feature map by name (:func:`feature_layer_name`). The last Dense layer is
``logits`` and a softmax ``probabilities`` follows; both compute in float32, also under a mixed
precision policy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import keras
from keras import ops

from ham_utils.config import BACKBONES, CLASSES, HEADS, Backbone, ParamsError, get_backbone
from ham_utils.errors import WeightsUnavailableError
from ham_utils.model import lite

HEAD_PREFIX = "head_"
OUTPUT_LAYERS: tuple[str, ...] = ("logits", "probabilities")
PREPROCESSING_LAYER = "imagenet_preprocessing"
STEM = "stem"

# Block names of the supported families: EfficientNet (v1 and v2) "block6d_...", Xception
# "block13_...", ResNet "conv4_block2_...". Layers without a block name belong to the block
# before them (EfficientNet's top_conv to the last block, Xception's residual branches to the
# block they close); layers before the first block form the stem.
BLOCK_NAME = re.compile(r"^(block\d+[a-z]?|conv\d+_block\d+)_")


@keras.saving.register_keras_serializable(package="ham_utils")
class CaffePreprocessing(keras.layers.Layer):
    """0..255 RGB to the "caffe" input of ResNet50: BGR order, ImageNet channel means removed.

    ``keras.applications.resnet50.preprocess_input`` as a serialisable layer, so that a saved
    model takes 0..255 RGB pixels like every other model here. Computes in float32.
    """

    BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images):
        bgr = ops.flip(ops.cast(images, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(self.BGR_MEAN, dtype=self.compute_dtype)


def _preprocessing_layer(kind: str) -> keras.layers.Layer | None:
    if kind == "caffe":
        return CaffePreprocessing(name=PREPROCESSING_LAYER)
    if kind == "lite":  # (x - 127) / 128, as the Lite ImageNet weights were trained
        return lite.normalisation_layer(PREPROCESSING_LAYER)
    if kind == "tf":  # [-1, 1]
        return keras.layers.Rescaling(
            1.0 / 127.5, offset=-1.0, name=PREPROCESSING_LAYER, dtype="float32"
        )
    return None


def _keras_weights(weights: str | os.PathLike[str] | None) -> str | None:
    """Translate the ``weights`` parameter for keras.applications, checking local files."""
    if weights is None or str(weights).lower() in ("", "none"):
        return None
    if str(weights) == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"backbone weights file {path} not found; give the path of a backbone weights file "
            "(e.g. Keras' *_notop.h5 copied from ~/.keras/models/ of a machine with internet), "
            "or set weights: imagenet or weights: none"
        )
    return str(path)


def _backbone_features(spec: Backbone, pixels: keras.KerasTensor, weights: str | None) -> Any:
    """Build the backbone on ``pixels`` (in the same graph) and return its feature map.

    Lite backbones get their weights after the whole model is built (:func:`build_model`).
    """
    if spec.is_lite:
        return lite.lite_features(pixels, spec.name)
    application = getattr(keras.applications, spec.application)
    try:
        backbone = application(
            include_top=False, weights=weights, input_tensor=pixels, input_shape=pixels.shape[1:]
        )
    except Exception as err:
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(
            f"could not load the ImageNet weights of backbone {spec.name} ({err}). Fixes: run "
            "once with internet access (Keras caches the file in ~/.keras/models/, or "
            "$KERAS_HOME/models/); or set weights to a local backbone weights file; or set "
            "weights: none to train from random initialisation"
        ) from err
    return backbone.output


def _head(features: Any, head: str, dropout: float) -> Any:
    x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(features)
    if head == "simple":
        return keras.layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    for i, (units, rate) in enumerate(((384, dropout), (128, dropout * 2 / 3)), start=1):
        x = keras.layers.Dense(units, activation="swish", name=f"{HEAD_PREFIX}dense_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{HEAD_PREFIX}bn_{i}")(x)
        x = keras.layers.Dropout(rate, name=f"{HEAD_PREFIX}dropout_{i}")(x)
    return x


def build_model(
    backbone: str = "efficientnetb0",
    image_size: int | None = None,
    weights: str | os.PathLike[str] | None = "none",
    head: str = "simple",
    dropout: float = 0.3,
    num_classes: int = len(CLASSES),
) -> keras.Model:
    """A classifier of 0..255 RGB images of ``image_size`` pixels (default: the backbone's).

    ``weights``: ``"none"`` (random initialisation), ``"imagenet"`` (downloaded once by Keras,
    or for EfficientNet-Lite converted once from its weights package; an error with the fixes
    if that fails, never a silent fallback) or the path of a backbone weights file.
    ``head="simple"``: pooling, dropout, Dense. ``head="b3"``: pooling, Dense 384 swish, BN,
    dropout ``dropout``, Dense 128 swish, BN, dropout ``2/3 * dropout`` (0.3 and 0.2 at the
    default), Dense. The output is the float32 ``probabilities`` softmax of ``logits``.
    """
    spec = get_backbone(backbone)
    if head not in HEADS:
        raise ParamsError(f"unknown head {head!r}; choose one of {HEADS}")
    if not 0.0 <= dropout < 1.0:
        raise ParamsError(f"dropout must lie in [0, 1), got {dropout}")
    size = image_size or spec.image_size
    keras_weights = _keras_weights(weights)

    inputs = keras.Input((size, size, 3), name="image")
    pixels = inputs
    preprocessing = _preprocessing_layer(spec.preprocessing)
    if preprocessing is not None:
        pixels = preprocessing(pixels)
    features = _backbone_features(spec, pixels, keras_weights)
    x = _head(features, head, dropout)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(
        logits
    )
    model = keras.Model(inputs, probabilities, name=f"{spec.name}_{head}")
    if spec.is_lite and keras_weights is not None:
        lite.load_backbone_weights(model, spec.name, keras_weights)
    return model


def load_model(path: str | os.PathLike[str], compile: bool = False) -> keras.Model:
    """Load a ``.keras`` model saved from :func:`build_model` or a training checkpoint."""
    import ham_utils.model.metrics  # noqa: F401  registers BalancedAccuracy, compiled into checkpoints

    return keras.models.load_model(path, compile=compile)


def _is_head(layer: keras.layers.Layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX) or layer.name in OUTPUT_LAYERS


def all_layers(model: Any) -> list[Any]:
    """``model`` and every layer in it, each once, nested models and their sub-models included.

    Public API only (each model's ``layers``), in place of Keras' private
    ``_flatten_layers()``; tests/test_meta.py checks they agree on the models built here.
    """
    found: dict[int, Any] = {}
    pending = [model]
    while pending:
        layer = pending.pop()
        if id(layer) not in found:
            found[id(layer)] = layer
            pending.extend(reversed(getattr(layer, "layers", [])))
    return list(found.values())


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers of a model from :func:`build_model`, in order (no input, no head)."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and not _is_head(layer)
    ]


def backbone_blocks(model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """The backbone's layers grouped into blocks, bottom to top; the stem comes first."""
    blocks: list[tuple[str, list[keras.layers.Layer]]] = [(STEM, [])]
    for layer in backbone_layers(model):
        match = BLOCK_NAME.match(layer.name)
        if match and match.group(1) != blocks[-1][0]:
            blocks.append((match.group(1), []))
        blocks[-1][1].append(layer)
    return [block for block in blocks if block[1]]


def freeze_backbone(model: keras.Model) -> None:
    """Make every backbone layer non-trainable; the head stays trainable.

    Recompile the model afterwards: Keras fixes the trainable weights at compile time.
    """
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_backbone(model: keras.Model, top_blocks: int | Literal["all"]) -> list[str]:
    """Make the top ``top_blocks`` backbone blocks trainable (``"all"``: every block).

    A block is an EfficientNet block (block1a..block7x; the top conv belongs to the last one),
    a ResNet residual block (conv5_block3) or an Xception block (block14); the stem counts as
    the first block. Blocks below stay frozen. BatchNormalization layers of the backbone always
    stay frozen, so they run in inference mode with their (ImageNet) statistics: small,
    imbalanced fine-tuning batches would otherwise spoil them. Returns the unfrozen block names.
    Recompile the model afterwards.
    """
    blocks = backbone_blocks(model)
    if top_blocks == "all":
        count = len(blocks)
    elif isinstance(top_blocks, int) and not isinstance(top_blocks, bool) and top_blocks >= 0:
        count = min(top_blocks, len(blocks))
    else:
        raise ParamsError(f"top_blocks must be a number >= 0 or 'all', got {top_blocks!r}")
    freeze_backbone(model)
    unfrozen = blocks[len(blocks) - count :]
    for _, layers in unfrozen:
        for layer in layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return [name for name, _ in unfrozen]


def feature_layer_name(model: keras.Model) -> str:
    """Name of the last convolutional feature map of the backbone, the Grad-CAM target.

    The registry's name where the model has it (``top_activation`` on EfficientNets), otherwise
    the last backbone layer with a 4-D output.
    """
    names = {layer.name for layer in model.layers}
    for spec in BACKBONES.values():
        if spec.feature_layer in names:
            return spec.feature_layer
    for layer in reversed(backbone_layers(model)):
        if len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name} has no layer with a 4-D (image-like) output")
