"""Evaluate a finished run: predictions (with optional test-time augmentation), metrics,
temperature scaling and figures, on its test split and on an external ISIC 2018 set.

Writes ``runs/<run_id>/evaluation/`` (test split) and ``evaluation/external/``:
``predictions.csv`` (image_id, true class, one probability per class, predicted class),
``metrics.json`` and ``figures/*.png``. The test split is predicted once here, at the end;
nothing is tuned on it (the temperature is fitted on the validation split).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ham_utils.config import CLASSES, resolve_path
from ham_utils.errors import DataError
from ham_utils.runs import Run

log = logging.getLogger("ham_utils")

PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
FIGURES = ("training_curves", "confusion_matrix", "roc", "precision_recall", "reliability",
           "per_class_f1")  # fmt: skip


def tta_views(images: np.ndarray, views: int) -> list[np.ndarray]:
    """The first ``views`` of the 8 symmetries of the square (1: the image itself; 2: plus a
    horizontal flip; 4: all flips; 8: flips and quarter turns). Dermoscopy has no up or down,
    so every view is a plausible image of the same lesion."""
    if views not in (1, 2, 4, 8):
        raise ValueError(f"views must be 1, 2, 4 or 8, got {views}")
    flips = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    turned = [np.rot90(v, k=1, axes=(1, 2)) for v in flips]
    return (flips + turned)[:views]


def predict_probabilities(
    model: Any, images: np.ndarray, batch_size: int = 64, tta: int = 1, progress: bool = True
) -> np.ndarray:
    """Class probabilities of uint8 images (N, H, W, 3), averaged over ``tta`` views."""
    from tqdm import tqdm

    total = np.zeros((len(images), model.output_shape[-1]), dtype=np.float64)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, unit="batch"):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        for view in tta_views(batch, tta):
            total[start : start + len(batch)] += model.predict_on_batch(np.ascontiguousarray(view))
    return (total / tta).astype(np.float32)


def predictions_table(
    image_ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: tuple[str, ...]
) -> pd.DataFrame:
    table = pd.DataFrame({"image_id": image_ids, "true": [classes[i] for i in labels]})
    for i, name in enumerate(classes):
        table[f"p_{name}"] = probs[:, i]
    table["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    return table


def read_predictions(path: Path, classes: tuple[str, ...] = CLASSES) -> tuple[Any, Any, Any]:
    """``(image_ids, true labels, probabilities)`` from a ``predictions.csv``."""
    table = pd.read_csv(path, dtype={"image_id": str})
    labels = table["true"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = table[[f"p_{c}" for c in classes]].to_numpy(np.float32)
    return table["image_id"].to_numpy(), labels, probs


@dataclass
class EvaluationSet:
    """Images to evaluate with their labels, and where their results go."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    out_dir: Path


def _split_set(run: Run, split: str, progress: bool) -> EvaluationSet:
    from ham_utils.cache import build_split_cache

    splits = run.splits()
    rows = splits[splits["split"] == split]
    if rows.empty:
        raise DataError(f"{run.path / 'splits.csv'} has no {split!r} rows")
    params = run.params
    cached = build_split_cache(
        rows, split, params.cache_dir, params.image_size, params.resize_mode, progress=progress
    )
    return EvaluationSet(split, cached.images, cached.labels, cached.image_ids, run.evaluation_dir)


def find_ground_truth(path: Path) -> Path:
    """The ISIC 2018 ground truth CSV: ``path`` itself or the one ``*GroundTruth*.csv`` in it."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"external test set {path} not found; give the ground truth CSV")
    found = sorted(p for p in path.rglob("*.csv") if "groundtruth" in p.name.lower())
    if len(found) != 1:
        raise DataError(
            f"expected one *GroundTruth*.csv under {path}, found {len(found)}: "
            f"{[p.name for p in found]}; give the CSV itself as the external set"
        )
    return found[0]


def _external_set(run: Run, external: str, progress: bool) -> EvaluationSet:
    from ham_utils.cache import build_split_cache
    from ham_utils.config import CACHE_ROOT, dataset_slug
    from ham_utils.data import read_isic_ground_truth

    csv_path = find_ground_truth(resolve_path(external))
    dataset = read_isic_ground_truth(csv_path, progress=progress)
    out_dir = run.evaluation_dir / "external"
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.write_dropped(out_dir / "dropped_rows.csv")
    params = run.params
    cached = build_split_cache(
        dataset.metadata,
        "external",
        CACHE_ROOT / dataset_slug(csv_path.parent),
        params.image_size,
        params.resize_mode,
        progress=progress,
    )
    return EvaluationSet("external", cached.images, cached.labels, cached.image_ids, out_dir)


def _write_figures(
    out_dir: Path, labels: np.ndarray, probs: np.ndarray, metrics: dict, run: Run
) -> None:
    from ham_utils import plots

    figures = out_dir / "figures"
    classes = run.classes
    plots.plot_training_curves(run.history(), figures / "training_curves.png")
    cm = np.asarray(metrics["confusion_matrix"])
    plots.plot_confusion_matrices(cm, classes, figures / "confusion_matrix.png")
    plots.plot_roc_curves(labels, probs, classes, figures / "roc.png")
    plots.plot_pr_curves(labels, probs, classes, figures / "precision_recall.png")
    plots.plot_reliability(labels, probs, path=figures / "reliability.png")
    plots.plot_per_class_f1(metrics, figures / "per_class_f1.png")


def _evaluate_set(
    model: Any, run: Run, data: EvaluationSet, temperature: float | None, progress: bool
) -> dict[str, Any]:
    from ham_utils.scoring import (
        apply_temperature,
        evaluation_metrics,
        expected_calibration_error,
    )

    params = run.params
    probs = predict_probabilities(model, data.images, params.batch_size, params.tta, progress)
    data.out_dir.mkdir(parents=True, exist_ok=True)
    table = predictions_table(data.image_ids, data.labels, probs, run.classes)
    table.to_csv(data.out_dir / PREDICTIONS_FILE, index=False)
    metrics = evaluation_metrics(data.labels, probs, run.classes)
    metrics.update(
        {
            "set": data.name,
            "run": run.name,
            "synthetic_data": run.synthetic,
            "tta_views": params.tta,
            "temperature": temperature,
            "ece_after_temperature": None
            if temperature is None
            else expected_calibration_error(data.labels, apply_temperature(probs, temperature)),
        }
    )
    (data.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    _write_figures(data.out_dir, data.labels, probs, metrics, run)
    if params.track:
        from ham_utils.tracking import log_evaluation

        log_evaluation(run.path, data.name, metrics, data.out_dir)
    log.info(
        "%s: balanced accuracy %.3f, macro F1 %.3f on %d images -> %s",
        data.name,
        metrics["balanced_accuracy"],
        metrics["macro_f1"],
        metrics["n_images"],
        data.out_dir,
    )
    return metrics


def fit_run_temperature(model: Any, run: Run, progress: bool = True) -> float:
    """Temperature fitted on the run's validation split (never on test)."""
    from ham_utils.scoring import fit_temperature

    val = _split_set(run, "val", progress)
    probs = predict_probabilities(
        model, val.images, run.params.batch_size, run.params.tta, progress
    )
    return fit_temperature(probs, val.labels)


def evaluate_run(
    run: Run, external: str | None = None, which: str = "best", progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Evaluate ``run`` on its test split (and ``external``, an ISIC 2018 ground truth CSV or
    its folder; default the run's ``external_dir``). Returns the metrics by set name."""
    model = run.load_model(which)
    temperature = (
        fit_run_temperature(model, run, progress) if run.params.temperature_scaling else None
    )
    results = {
        "test": _evaluate_set(model, run, _split_set(run, "test", progress), temperature, progress)
    }
    external = external if external is not None else run.params.external_dir
    if external:
        data = _external_set(run, external, progress)
        results["external"] = _evaluate_set(model, run, data, temperature, progress)
    return results
