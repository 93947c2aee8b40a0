"""The backbone registry: every allowed ``backbone`` name and what it needs, without Keras.

Kept free of Keras imports so that :mod:`ham_utils.config` can check a ``backbone`` when the
parameters are read, before any split, cache or model is built. :mod:`ham_utils.models` and
:mod:`ham_utils.lite` build the networks from these entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LITE = "lite"  # the ``application`` of the EfficientNet-Lite backbones (ham_utils.lite)

# (width coefficient, depth coefficient, ImageNet resolution, dropout) of the Lite variants.
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


@dataclass(frozen=True)
class Backbone:
    """One backbone and how to feed it 0..255 pixels.

    ``application`` names a ``keras.applications`` constructor, or ``"lite"`` for the
    EfficientNet-Lite networks of :mod:`ham_utils.lite` (ImageNet weights from the package index).
    """

    name: str
    application: str
    image_size: int  # the resolution it was designed (and ImageNet-trained) for
    preprocessing: Literal["inside", "caffe", "tf", "lite"]
    feature_layer: str | None = None  # last conv feature map; None: found automatically

    @property
    def is_lite(self) -> bool:
        return self.application == LITE


def _efficientnets() -> list[Backbone]:
    sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
    v1 = [
        Backbone(f"efficientnet{v}", f"EfficientNet{v.upper()}", s, "inside", "top_activation")
        for v, s in sizes.items()
    ]
    v2_sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384}
    v2 = [
        Backbone(f"efficientnetv2{v}", f"EfficientNetV2{v.upper()}", s, "inside", "top_activation")
        for v, s in v2_sizes.items()
    ]
    return v1 + v2


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        *_efficientnets(),
        *(
            Backbone(name, LITE, size, "lite", "top_activation")
            for name, (_, _, size, _) in LITE_VARIANTS.items()
        ),
        Backbone("resnet50", "ResNet50", 224, "caffe"),
        Backbone("xception", "Xception", 299, "tf"),
    ]
}


def get_backbone(name: str) -> Backbone:
    """The registry entry of a backbone name (case-insensitive)."""
    from ham_utils.config import ParamsError

    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ParamsError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}") from None
