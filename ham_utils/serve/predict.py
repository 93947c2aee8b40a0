"""One image in, a prediction out: class probabilities, risk level and Grad-CAM of a run.

Shared by the Streamlit app and ``python -m ham_utils predict``. Each image is decoded once
(any mode, EXIF orientation applied; see :mod:`ham_utils.data.images`) and resized twice: to the
run's input size for the model and to a larger copy for the overlay. When the model's
evaluation fitted a temperature on the validation split, the probabilities shown are the
calibrated ones (the one fitted for single-view outputs, as here; the predicted class is the
same either way).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ham_utils.config import CLASS_NAMES, RISK_GROUPS, RISK_OF_CLASS
from ham_utils.errors import DataError
from ham_utils.evaluation.ood import OOD_MESSAGE, OodDetector
from ham_utils.runs import Run

log = logging.getLogger("ham_utils")

RISK_LEVELS: tuple[str, ...] = tuple(RISK_GROUPS)  # high, moderate, low
UPLOAD_FIX = "use a JPEG, PNG, BMP or TIFF image of the lesion"


@dataclass
class Prediction:
    """What the model says about one image."""

    image: str
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (K,), calibrated when the run has a temperature
    explained_class: str  # the class the heatmap explains
    heatmap: np.ndarray  # (h, w) in [0, 1]
    display: np.ndarray  # uint8 (S, S, 3): the image as the model framed it, enlarged
    temperature: float | None = None
    # Screening thresholds chosen on validation (ham_utils.runs.Evaluation.operating_points):
    # "melanoma", "high_risk", "target_sensitivity"; None when the model has none.
    operating_points: dict[str, Any] | None = None
    # The out-of-distribution check (ham_utils.evaluation.ood): the image's score and the threshold;
    # None when the model has no detector.
    ood_score: float | None = None
    ood_threshold: float | None = None

    @property
    def out_of_distribution(self) -> bool | None:
        """Whether the image looks unlike the training images (None: no detector)."""
        if self.ood_score is None or self.ood_threshold is None:
            return None
        return self.ood_score > self.ood_threshold

    @property
    def predicted(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def risk(self) -> str | None:
        """Risk group (:data:`ham_utils.config.RISK_GROUPS`): high when the most probable class
        is high-risk or the high-risk group's probability reaches the threshold chosen on
        validation; otherwise the group of the most probable class. None for an image the
        out-of-distribution check flags: the model should not judge it."""
        if self.out_of_distribution:
            return None
        if self.above_threshold("high_risk"):
            return "high"
        return RISK_OF_CLASS[self.predicted]

    def risk_rule(self) -> str | None:
        """Which rule set the risk level, with its threshold (None when no level is given)."""
        level = self.risk
        if level is None:
            return None
        if self.above_threshold("high_risk"):
            threshold = self.operating_points["high_risk"]
            return (
                f"high: the high-risk group's probability (melanoma + basal cell carcinoma), "
                f"{self.screening_scores()['high_risk']:.1%}, reaches its threshold of "
                f"{threshold:.1%}, chosen on the run's validation split"
            )
        return f"{level}: the most probable class, {self.predicted}, is in the {level}-risk group"

    def above_threshold(self, name: str) -> bool | None:
        """Whether the ``melanoma`` or ``high_risk`` probability reaches its screening
        threshold; None without thresholds."""
        threshold = (self.operating_points or {}).get(name)
        if threshold is None:
            return None
        return self.screening_scores()[name] >= threshold

    def screening_scores(self) -> dict[str, float]:
        """P(melanoma) and P(high-risk group), as evaluation scores them
        (:func:`ham_utils.evaluation.evaluate.screening_scores`)."""
        from ham_utils.evaluation.evaluate import screening_scores

        scores = screening_scores(self.probabilities[None], self.classes)
        return {name: float(values[0]) for name, values in scores.items()}

    def screening(self) -> dict[str, Any] | None:
        """The melanoma and high-risk scores against their thresholds, worded as what they
        are: research outputs from a validation split, not advice."""
        points = self.operating_points
        if points is None:
            return None
        scores = self.screening_scores()
        return {
            name: {
                "probability": round(scores[name], 6),
                "threshold": None if points.get(name) is None else round(points[name], 6),
                "above": self.above_threshold(name),
            }
            for name in scores
        } | {
            "note": (
                f"research output: thresholds chosen on the validation split to catch "
                f"{points['target_sensitivity']:.0%} of its cases; not a diagnosis or advice"
            )
        }

    def ranked(self) -> list[tuple[str, float]]:
        """(class, probability), the most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.classes[i], float(self.probabilities[i])) for i in order]

    def risk_probabilities(self) -> dict[str, float]:
        """Total probability of each risk group."""
        by_class = dict(zip(self.classes, self.probabilities.tolist(), strict=True))
        return {level: sum(by_class[c] for c in RISK_GROUPS[level]) for level in RISK_LEVELS}

    def overlay(self, alpha: float = 0.4) -> np.ndarray:
        from ham_utils.explain.gradcam import overlay

        return overlay(self.display, self.heatmap, alpha)

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready summary (the heatmap left out)."""
        return {
            "image": self.image,
            "predicted": self.predicted,
            "predicted_name": CLASS_NAMES[self.predicted],
            "risk": self.risk,
            "risk_rule": self.risk_rule(),
            "probabilities": {
                c: round(float(p), 6) for c, p in zip(self.classes, self.probabilities, strict=True)
            },
            "risk_probabilities": {k: round(v, 6) for k, v in self.risk_probabilities().items()},
            "calibrated": self.temperature is not None,
            "screening": self.screening(),
            "out_of_distribution": None
            if self.ood_score is None
            else {
                "flagged": bool(self.out_of_distribution),
                "score": round(self.ood_score, 3),
                "threshold": round(self.ood_threshold, 3),
            },
        } | ({"warning": OOD_MESSAGE} if self.out_of_distribution else {})


# predict and the app classify each image as it is, without test-time augmentation.
PREDICT_VIEWS = 1


def run_temperature(run: Run, which: str = "best") -> float | None:
    """The temperature fitted on the validation split for single-view outputs of this model
    (None when it has not been evaluated with temperature scaling)."""
    return run.evaluation(which).temperature(PREDICT_VIEWS)


def missing_fitted(run: Run, which: str = "best") -> str | None:
    """What this model lacks of what its evaluation fits on the validation split (temperature,
    screening thresholds, out-of-distribution check), in words with the fix; None when it
    has all of it."""
    evaluation = run.evaluation(which)
    fix = (
        f"run `python -m ham_utils evaluate --run {run.path} --which {which}` (with data_dir "
        "pointing at the images) to fit them"
    )
    metrics = evaluation.metrics()
    if metrics is None:
        return (
            f"the {which} model of {run.name} has not been evaluated: its probabilities are "
            f"uncalibrated, and it has no screening thresholds and no out-of-distribution "
            f"check; {fix}"
        )
    needed = {  # file, whether this evaluation wrote it, what a prediction lacks without it
        evaluation.calibration_file: (metrics.get("temperature") is not None, "calibration"),
        evaluation.operating_points_file: (True, "screening thresholds"),
        evaluation.ood_file: (True, "the out-of-distribution check"),
    }
    missing = {p.name: what for p, (wanted, what) in needed.items() if wanted and not p.is_file()}
    if not missing:
        return None
    return (
        f"{evaluation.root} lacks {', '.join(missing)}, fitted by its evaluation: predictions "
        f"go without {' and '.join(missing.values())}; {fix}"
    )


class Predictor:
    """A run's model, Grad-CAM and calibration, loaded once for many images. ``missing`` says
    what it lacks of its evaluation's fitted files (:func:`missing_fitted`)."""

    def __init__(self, run: Run, which: str = "best", model: Any = None) -> None:
        from ham_utils.explain.explainer import RunExplainer

        self.run = run
        self.missing = missing_fitted(run, which)
        self.explainer = RunExplainer(run, which, model)
        self.temperature = run_temperature(run, which)
        evaluation = run.evaluation(which)
        self.operating_points = evaluation.operating_points(PREDICT_VIEWS)
        self.ood = OodDetector.load(evaluation.ood_file)
        self.features = self.ood.extractor(self.explainer.model) if self.ood else None

    def warm_up(self) -> None:
        """Trace the model and its Grad-CAM on a blank image (some seconds), so that the
        first real prediction is as fast as the ones after it."""
        size = self.run.params.image_size
        blank = np.zeros((size, size, 3), dtype="uint8")
        self.explainer.explain(blank)
        if self.features is not None:
            self.features.features(blank[None])

    def predict(
        self,
        source: str | os.PathLike[str] | bytes,
        name: str | None = None,
        explain_class: str | None = None,
    ) -> Prediction:
        """Predict one image file or its bytes; raises :class:`DataError` for a bad image.

        ``explain_class``: the class whose Grad-CAM to draw (default: the predicted one).
        """
        from ham_utils.data.images import open_rgb, resize_square
        from ham_utils.evaluation.scoring import apply_temperature
        from ham_utils.explain.explainer import DISPLAY_SIZE

        name = name or (str(source) if not isinstance(source, bytes) else "uploaded image")
        params = self.run.params
        classes = self.run.classes
        if explain_class is not None and explain_class not in classes:
            raise ValueError(f"explain_class must be one of {classes}, got {explain_class!r}")
        display_size = max(params.image_size, DISPLAY_SIZE)
        try:
            picture = open_rgb(source, display_size, fix=UPLOAD_FIX)
        except DataError as e:
            raise DataError(str(e).replace("uploaded image", name, 1)) from e
        pixels = resize_square(picture, params.image_size, params.resize_mode)
        display = resize_square(picture, display_size, params.resize_mode)
        index = None if explain_class is None else classes.index(explain_class)
        result = self.explainer.explain(pixels, index)
        probabilities = result.probabilities.astype("float64")
        ood_score = (
            None
            if self.ood is None
            else float(self.ood.scores(self.features.features(pixels[None]))[0])
        )
        if self.temperature is not None:
            probabilities = apply_temperature(probabilities[None], self.temperature)[0]
        return Prediction(
            image=name,
            classes=classes,
            probabilities=probabilities,
            explained_class=classes[result.explained_class],
            heatmap=result.heatmap,
            display=display,
            temperature=self.temperature,
            operating_points=self.operating_points,
            ood_score=ood_score,
            ood_threshold=None if self.ood is None else self.ood.threshold,
        )


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, and the image files (by suffix, sorted) of folders given. What a
    folder holds besides image files (other files, subfolders) is named in a warning; no
    image at all is a :class:`DataError`."""
    from ham_utils.data.images import IMAGE_SUFFIXES, is_image_file

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            paths.append(path)
            continue
        entries = sorted(path.iterdir())
        images = [p for p in entries if p.is_file() and is_image_file(p)]
        skipped = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in images]
        if skipped:
            shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            log.warning(
                "%s: skipped %d entr%s that %s not image files (%s); folders are not searched "
                "below their top level, and image files end in %s",
                path,
                len(skipped),
                "y" if len(skipped) == 1 else "ies",
                "is" if len(skipped) == 1 else "are",
                shown,
                " ".join(IMAGE_SUFFIXES),
            )
        paths += images
    if not paths:
        raise DataError(
            f"no image files in {', '.join(str(i) for i in inputs)}; give image files or "
            f"folders holding them (file names ending in {' '.join(IMAGE_SUFFIXES)})"
        )
    return paths


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike[str]],
    gradcam_dir: Path | None = None,
    alpha: float = 0.4,
) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per image: the prediction, or ``{"image", "error"}``.

    With ``gradcam_dir``, each overlay is written as ``<stem>_gradcam.png`` there (a stem
    seen before gets ``_2``, ``_3``, ... so that no overlay overwrites another).
    """
    from PIL import Image

    used: dict[str, int] = {}
    for path in image_paths(inputs):
        if not path.is_file():
            yield {"image": str(path), "error": f"{path} does not exist or is not a file"}
            continue
        try:
            prediction = predictor.predict(path)
        except DataError as e:
            yield {"image": str(path), "error": str(e)}
            continue
        record = prediction.as_record()
        if gradcam_dir is not None:
            gradcam_dir.mkdir(parents=True, exist_ok=True)
            used[path.stem] = used.get(path.stem, 0) + 1
            suffix = "" if used[path.stem] == 1 else f"_{used[path.stem]}"
            target = gradcam_dir / f"{path.stem}{suffix}_gradcam.png"
            Image.fromarray(prediction.overlay(alpha)).save(target)
            record["gradcam"] = str(target)
        yield record
