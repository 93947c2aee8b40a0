"""Grad-CAM for a run: overlays for given images, and per-class grids of test images.

The model sees the image as it was trained (cached size and resize mode); the overlay is
drawn on a larger copy of the same framing so that the picture stays readable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ham_utils.runs import Run

DISPLAY_SIZE = 256  # overlays are drawn at least this large


@dataclass
class Explanation:
    """One image's prediction and Grad-CAM."""

    probabilities: np.ndarray  # (K,)
    explained_class: int
    heatmap: np.ndarray  # (h, w) in [0, 1]


class RunExplainer:
    """A run's model with its Grad-CAM, loaded once."""

    def __init__(self, run: Run, which: str = "best", model: Any = None) -> None:
        from ham_utils.explain.gradcam import GradCam

        self.run = run
        self.model = model if model is not None else run.load_model(which)
        self.cam = GradCam(self.model)

    @property
    def image_size(self) -> int:
        return self.run.params.image_size

    def model_input(self, source: Any) -> np.ndarray:
        """An image file (or file-like, or PIL image) as the model sees it, uint8."""
        from ham_utils.data.images import load_image

        return load_image(source, self.image_size, self.run.params.resize_mode)

    def display_image(self, source: Any) -> np.ndarray:
        from ham_utils.data.images import load_image

        size = max(self.image_size, DISPLAY_SIZE)
        return load_image(source, size, self.run.params.resize_mode)

    def explain(self, pixels: np.ndarray, class_index: int | None = None) -> Explanation:
        """Prediction and Grad-CAM of one model-sized uint8 image (``class_index`` None: the
        predicted class). Overlays are drawn by the callers, on the picture they show."""
        heatmaps, probs, classes = self.cam.heatmaps(pixels[None], class_index)
        return Explanation(probs[0], int(classes[0]), heatmaps[0])


def explain_files(
    explainer: RunExplainer,
    paths: Sequence[str | os.PathLike[str]],
    out_dir: Path,
    class_name: str | None = None,
) -> list[Path]:
    """Write ``<stem>_gradcam.png`` overlays of image files into ``out_dir``."""
    from PIL import Image

    from ham_utils.explain.gradcam import overlay

    classes = explainer.run.classes
    class_index = None if class_name is None else classes.index(class_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        result = explainer.explain(explainer.model_input(path), class_index)
        target = out_dir / f"{Path(path).stem}_gradcam.png"
        Image.fromarray(overlay(explainer.display_image(path), result.heatmap)).save(target)
        written.append(target)
    return written


def class_examples(predictions: pd.DataFrame, true_class: str, per_group: int, seed: int = 0):
    """Up to ``per_group`` correctly and wrongly classified test rows of ``true_class``,
    the most confident first (the clearest examples of each)."""
    rows = predictions[predictions["true"] == true_class].copy()
    rows["confidence"] = [row[f"p_{row['predicted']}"] for _, row in rows.iterrows()]
    rows = rows.sort_values(["confidence", "image_id"], ascending=[False, True])
    correct = rows[rows["predicted"] == true_class].head(per_group)
    wrong = rows[rows["predicted"] != true_class].head(per_group)
    return correct, wrong


def class_grids(
    explainer: RunExplainer, predictions_csv: Path, out_dir: Path, per_group: int = 3
) -> dict[str, Path]:
    """For each class, a figure of its correctly and wrongly classified test images with
    the Grad-CAM of the predicted class; ``gradcam_<class>.png`` in ``out_dir``."""
    from ham_utils.explain.gradcam import gradcam_grid

    run = explainer.run
    predictions = pd.read_csv(predictions_csv, dtype={"image_id": str})
    paths = run.splits().set_index("image_id")["path"]
    written: dict[str, Path] = {}
    for name in run.classes:
        correct, wrong = class_examples(predictions, name, per_group)
        rows = pd.concat([correct, wrong])
        if rows.empty:
            continue
        displays, heatmaps, titles = [], [], []
        for _, row in rows.iterrows():
            path = paths[row["image_id"]]
            result = explainer.explain(explainer.model_input(path))
            displays.append(explainer.display_image(path))
            heatmaps.append(result.heatmap)
            verdict = "correct" if row["predicted"] == name else "WRONG"
            confidence = row[f"p_{row['predicted']}"]
            titles.append(f"{verdict}: {name} -> {row['predicted']} ({confidence:.2f})")
        target = out_dir / f"gradcam_{name}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        gradcam_grid(displays, heatmaps, titles, columns=max(1, per_group), path=target)
        written[name] = target
    return written
