"""Images the model should not judge: an out-of-distribution score on its own features.

A softmax spreads its probability over the seven classes for any input, a photograph of a
cat or a frame of noise included, so the probabilities cannot say "this is not a lesion".
The score here follows the feature ensemble of Lee et al. ("A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018): at the last
layer of each checked stage of the backbone, the per-channel spatial mean and standard
deviation of the feature map are compared with those of the training images by a
Mahalanobis distance (one Gaussian per layer, covariance by scikit-learn's Ledoit-Wolf
shrinkage, since the features outnumber the images). Each layer's distance is divided by its
median on the validation split and the largest ratio is the score; the threshold flags
``ood_flag_rate`` of the validation lesions.

What the check looks at was chosen so that a lesion photographed at another resolution is
not flagged (README, "Out of distribution"). The statistics of the early stages measure
sharpness, and a 600x450 photograph shrunk to the model's input is sharper than the 200x150
copies a model is trained on: with every stage checked at the model's resolution, all 124
such photographs were flagged. The check therefore sees each image at a third of the
model's resolution (shrunk and enlarged again, :data:`VIEW_SCALE`), where every source still
has all the detail the view holds, and reads the stages from block 4 up
(:data:`FIRST_STAGE`). Flat colours and noise are still far from skin there, and the top
layer catches photographs of other things.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# At most this many training images estimate the means and covariances.
MAX_FIT_IMAGES = 3000
OOD_MESSAGE = (
    "this does not look like the dermatoscopic images the model was trained on: no risk "
    "level is given"
)
# The view the check looks at: the model's input shrunk by this factor and enlarged again.
VIEW_SCALE = 3
# The first backbone stage whose statistics are read (EfficientNets: stem, block1 ... block7).
FIRST_STAGE = 4


def stage_layers(model: Any, first_stage: int = 0) -> list[Any]:
    """The last image-like layer of each stage of the backbone (stem, block1 ... block7 on
    EfficientNets) from ``block{first_stage}`` up, and the last feature map (Grad-CAM's)."""
    from ham_utils.model.build import backbone_blocks, feature_layer_name

    last: dict[str, Any] = {}
    for name, layers in backbone_blocks(model):
        image_like = [layer for layer in layers if len(layer.output.shape) == 4]
        if image_like:
            last[name.rstrip("abcdefghijklmnopqrstuvwxyz") or name] = image_like[-1]
    top = model.get_layer(feature_layer_name(model))
    kept = [
        layer
        for stage, layer in last.items()
        if layer is not top and _stage_number(stage) >= first_stage
    ]
    return [*kept, top]


def _stage_number(stage: str) -> int:
    """``block4`` (EfficientNet, Xception) and ``conv4_block2`` (ResNet) are in stage 4; the
    stem is 0."""
    numbered = re.match(r"(?:block|conv)(\d+)", stage)
    return int(numbered.group(1)) if numbered else 0


class FeatureExtractor:
    """Per checked stage, the per-channel spatial mean and standard deviation of the feature
    map, on the view of each image that ``view_scale`` makes."""

    def __init__(
        self, model: Any, view_scale: int = VIEW_SCALE, first_stage: int = FIRST_STAGE
    ) -> None:
        import keras

        self.view_scale, self.first_stage = view_scale, first_stage
        self.layers = stage_layers(model, first_stage)
        features = keras.Model(model.inputs, [layer.output for layer in self.layers])
        shape = tuple(model.inputs[0].shape[1:])
        height, width = shape[:2]
        pixels = keras.Input(shape)
        view = pixels
        if view_scale > 1:
            small = (max(1, round(height / view_scale)), max(1, round(width / view_scale)))
            view = keras.layers.Resizing(*small, interpolation="bicubic", antialias=True)(view)
            view = keras.layers.Resizing(height, width, interpolation="bicubic")(view)
        self.model = keras.Model(pixels, features(view))

    def features(self, images: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
        """One (N, 2C) array per stage layer."""
        per_layer: list[list[np.ndarray]] = [[] for _ in self.layers]
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
            for out, maps in zip(per_layer, self.model.predict_on_batch(batch), strict=True):
                maps = np.asarray(maps, dtype=np.float64)
                out.append(np.concatenate([maps.mean(axis=(1, 2)), maps.std(axis=(1, 2))], 1))
        return [np.concatenate(out) for out in per_layer]


@dataclass(frozen=True)
class OodDetector:
    """Per layer a mean and precision matrix of training features and the validation median
    of the distance; the threshold on the largest median-scaled distance; and the view and
    stages the features were read with (a check fitted before they were chosen read every
    stage at full resolution: 1 and 0)."""

    means: list[np.ndarray]
    precisions: list[np.ndarray]
    scales: np.ndarray
    threshold: float
    flag_rate: float
    view_scale: int = 1
    first_stage: int = 0

    def extractor(self, model: Any) -> FeatureExtractor:
        """The features this check was fitted on, read from ``model``."""
        return FeatureExtractor(model, self.view_scale, self.first_stage)

    def layer_distances(self, features: list[np.ndarray]) -> np.ndarray:
        """(N, layers) squared Mahalanobis distances to the training features."""
        return np.stack(
            [
                np.einsum("nc,cd,nd->n", f - mean, precision, f - mean)
                for f, mean, precision in zip(features, self.means, self.precisions, strict=True)
            ],
            axis=1,
        )

    def scores(self, features: list[np.ndarray]) -> np.ndarray:
        return (self.layer_distances(features) / self.scales).max(axis=1)

    def flags(self, features: list[np.ndarray]) -> np.ndarray:
        return self.scores(features) > self.threshold

    def save(self, path: Path) -> None:
        arrays = {f"mean_{i}": m for i, m in enumerate(self.means)}
        arrays |= {f"precision_{i}": p for i, p in enumerate(self.precisions)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, scales=self.scales, threshold=self.threshold, flag_rate=self.flag_rate,
                 view_scale=self.view_scale, first_stage=self.first_stage, **arrays)  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> OodDetector | None:
        if not path.is_file():
            return None
        with np.load(path) as stored:
            n = len(stored["scales"])
            return cls(
                [stored[f"mean_{i}"] for i in range(n)],
                [stored[f"precision_{i}"] for i in range(n)],
                stored["scales"],
                float(stored["threshold"]),
                float(stored["flag_rate"]),
                int(stored["view_scale"]) if "view_scale" in stored else 1,
                int(stored["first_stage"]) if "first_stage" in stored else 0,
            )


def fit_detector(
    train_features: list[np.ndarray],
    val_features: list[np.ndarray],
    flag_rate: float,
    extractor: FeatureExtractor | None = None,
) -> OodDetector:
    """Gaussians of the training features per layer; the threshold flags ``flag_rate`` of
    the validation images (the ``1 - flag_rate`` quantile of their scores). ``extractor``:
    the one the features came from, whose view and stages the detector records."""
    from sklearn.covariance import LedoitWolf

    means = [f.mean(axis=0) for f in train_features]
    precisions = [LedoitWolf().fit(f).precision_ for f in train_features]
    unscaled = OodDetector(means, precisions, np.ones(len(means)), np.inf, flag_rate)
    scales = np.median(unscaled.layer_distances(val_features), axis=0)
    scaled = OodDetector(means, precisions, scales, np.inf, flag_rate)
    threshold = float(np.quantile(scaled.scores(val_features), 1 - flag_rate))
    view = (extractor.view_scale, extractor.first_stage) if extractor else (1, 0)
    return OodDetector(means, precisions, scales, threshold, flag_rate, *view)


def fit_subset(n: int, seed: int = 0) -> np.ndarray:
    """Indices of at most :data:`MAX_FIT_IMAGES` of ``n`` training images, seeded."""
    if n <= MAX_FIT_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_FIT_IMAGES, replace=False))
