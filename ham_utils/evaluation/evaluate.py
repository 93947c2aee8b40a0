"""Evaluate one model of a finished run: predictions (with optional test-time augmentation),
metrics, temperature scaling and figures, on its test split and on an external ISIC 2018 set.

Writes ``runs/<run_id>/evaluation/<model>/`` (layout: :mod:`ham_utils.runs`): the test
split's ``predictions.csv`` (image_id, true class, one probability per class, predicted
class), ``metrics.json`` (which names the model and the TTA views) and ``figures/*.png``; the
external set's under ``external/``; and ``calibration.json``, the temperatures fitted on the
validation split for the TTA outputs evaluated here and for the single-view outputs that
``predict`` and the app make. The test split is predicted once here, at the end; nothing is
tuned on it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ham_utils.config import CLASSES, RISK_GROUPS, TTA_VIEWS, resolve_path
from ham_utils.errors import DataError
from ham_utils.runs import (
    CURVES_FILE,
    DROPPED_ROWS_FILE,
    EXTERNAL_SET,
    FIGURES_DIR,
    GRADCAM_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    SPLITS_FILE,
    Evaluation,
    Run,
    replace_folder,
    restore_interrupted,
    staging_dir,
)

log = logging.getLogger("ham_utils")

FIGURES = ("training_curves", "confusion_matrix", "roc", "precision_recall", "reliability",
           "per_class_f1", "risk_coverage")  # fmt: skip


def tta_views(images: np.ndarray, views: int) -> list[np.ndarray]:
    """The first ``views`` of the 8 symmetries of the square (1: the image itself; 2: plus a
    horizontal flip; 4: all flips; 8: flips and quarter turns). Dermoscopy has no up or down,
    so every view is a plausible image of the same lesion."""
    if views not in TTA_VIEWS:
        raise ValueError(f"views must be one of {TTA_VIEWS}, got {views}")
    flips = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    turned = [np.rot90(v, k=1, axes=(1, 2)) for v in flips]
    return (flips + turned)[:views]


def predict_views(
    model: Any, images: np.ndarray, batch_size: int = 64, tta: int = 1, progress: bool = True
) -> np.ndarray:
    """Class probabilities of uint8 images (N, H, W, 3) for each of ``tta`` views: (tta, N, K).
    View 0 is the image itself, what a single-view consumer (``predict``, the app) sees."""
    from tqdm import tqdm

    out = np.zeros((tta, len(images), model.output_shape[-1]), dtype=np.float32)
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, unit="batch"):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        for v, view in enumerate(tta_views(batch, tta)):
            out[v, start : start + len(batch)] = model.predict_on_batch(np.ascontiguousarray(view))
    return out


def predict_probabilities(
    model: Any, images: np.ndarray, batch_size: int = 64, tta: int = 1, progress: bool = True
) -> np.ndarray:
    """Class probabilities of uint8 images (N, H, W, 3), averaged over ``tta`` views."""
    views = predict_views(model, images, batch_size, tta, progress)
    return views.astype(np.float64).mean(axis=0).astype(np.float32)


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
    source: str  # where the images and labels come from, in words a reader can check
    # Lesion id per image when a lesion may have several (the bootstrap then resamples
    # lesions); None when each image is its own unit.
    groups: np.ndarray | None = None
    # Metadata rows (sex, age, localization, dx_type) in the order of the images; None for
    # sets without them (the ISIC 2018 ground truth has none).
    metadata: pd.DataFrame | None = None


def _split_set(run: Run, split: str, out_dir: Path, progress: bool) -> EvaluationSet:
    from ham_utils.data.cache import build_split_cache
    from ham_utils.data.split import check_images_found

    splits = run.splits()
    rows = splits[splits["split"] == split]
    if rows.empty:
        raise DataError(f"{run.path / SPLITS_FILE} has no {split!r} rows")
    params = run.params
    check_images_found(rows, params.resolved_data_dir, run.path / SPLITS_FILE)
    cached = build_split_cache(
        rows, split, params.cache_dir, params.image_size, params.resize_mode, progress=progress
    )
    # Sources name files a reader can find wherever the run travels: relative to the run
    # folder, or by the data set's own names, never this machine's folders.
    source = f"the run's {split} split ({SPLITS_FILE}, one image per lesion)"
    groups = None
    if not params.one_image_per_lesion_eval:
        source = f"the run's {split} split ({SPLITS_FILE}, every image)"
        lesion_of = rows.set_index("image_id")["lesion_id"]
        groups = lesion_of.loc[cached.image_ids].to_numpy()
    metadata = rows.set_index("image_id").loc[cached.image_ids].reset_index()
    return EvaluationSet(
        split, cached.images, cached.labels, cached.image_ids, out_dir, source, groups, metadata
    )


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


@dataclass(frozen=True)
class GroundTruth:
    """An external test set, read (and its images checked) before anything is written."""

    csv_path: Path
    dataset: Any  # ham_utils.data.metadata.DatasetRead


def read_external(external: str, progress: bool = True) -> GroundTruth:
    """The ISIC 2018 ground truth ``external`` names (the CSV or its folder), read and checked."""
    from ham_utils.data.metadata import read_isic_ground_truth

    csv_path = find_ground_truth(resolve_path(external))
    return GroundTruth(csv_path, read_isic_ground_truth(csv_path, progress=progress))


def _external_set(
    run: Run, truth: GroundTruth, evaluation: Evaluation, progress: bool
) -> EvaluationSet:
    from ham_utils.config import cache_root, dataset_slug
    from ham_utils.data.cache import build_split_cache

    dataset, csv_path = truth.dataset, truth.csv_path
    out_dir = evaluation.set_dir(EXTERNAL_SET)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.write_dropped(out_dir / DROPPED_ROWS_FILE)
    params = run.params
    cached = build_split_cache(
        dataset.metadata,
        "external",
        cache_root() / dataset_slug(csv_path.parent),
        params.image_size,
        params.resize_mode,
        progress=progress,
    )
    source = (
        f"ISIC 2018 Task 3 ground truth {csv_path.parent.name}/{csv_path.name}, "
        f"{len(dataset.dropped)} rows dropped"
    )
    return EvaluationSet(
        EXTERNAL_SET, cached.images, cached.labels, cached.image_ids, out_dir, source
    )


def _write_figures(
    data: EvaluationSet, probs: np.ndarray, metrics: dict, run: Run, counts: np.ndarray
) -> None:
    """The set's figures; bands from ``counts``, the resamples of the metrics' intervals."""
    from ham_utils.evaluation.bootstrap import reliability_bands, roc_bands
    from ham_utils.evaluation.scoring import SELECTIVE_COVERAGES, reliability_table, risk_coverage
    from ham_utils.figures import evaluation as figures_of
    from ham_utils.figures.training import plot_training_curves

    figures, labels = data.out_dir / FIGURES_DIR, data.labels
    classes = run.classes
    if data.name == "test":  # the training curves belong with the run's own evaluation only
        plot_training_curves(run.history(), figures / CURVES_FILE)
    cm = np.asarray(metrics["confusion_matrix"])
    figures_of.plot_confusion_matrices(cm, classes, figures / "confusion_matrix.png")
    bands = roc_bands(labels, probs, counts, figures_of.ROC_BAND_GRID)
    figures_of.plot_roc_curves(labels, probs, classes, figures / "roc.png", bands)
    figures_of.plot_pr_curves(labels, probs, classes, figures / "precision_recall.png")
    figures_of.plot_reliability(
        reliability_table(labels, probs),
        metrics["ece"],  # of these probabilities, by evaluation_metrics
        path=figures / "reliability.png",
        bands=reliability_bands(labels, probs, counts),
    )
    figures_of.plot_per_class_f1(metrics, figures / "per_class_f1.png", data.name)
    figures_of.plot_risk_coverage(
        risk_coverage(labels, probs), SELECTIVE_COVERAGES, figures / "risk_coverage.png"
    )


@dataclass(frozen=True)
class Fitted:
    """What the validation split fixes before test is looked at, for the TTA views evaluated
    here: the temperature (None: scaling off) and the screening thresholds."""

    temperature: float | None
    thresholds: dict[str, float | None]
    target_sensitivity: float
    ood: Any = None  # ham_utils.evaluation.ood.OodDetector
    features: Any = None  # ham_utils.evaluation.ood.FeatureExtractor of the model


def high_risk_probability(probs: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Total probability of the high-risk group (melanoma and basal cell carcinoma)."""
    return probs[:, [classes.index(c) for c in RISK_GROUPS["high"]]].sum(axis=1)


def screening_scores(probs: np.ndarray, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The scores a screening threshold applies to: P(melanoma) and P(high-risk group)."""
    return {
        "melanoma": probs[:, classes.index("mel")],
        "high_risk": high_risk_probability(probs, classes),
    }


def _screening_truth(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    high = [classes.index(c) for c in RISK_GROUPS["high"]]
    return {"melanoma": labels == classes.index("mel"), "high_risk": np.isin(labels, high)}


def fit_on_validation(
    model: Any, run: Run, evaluation: Evaluation, progress: bool = True
) -> Fitted:
    """Fit on the run's validation split (never on test), for the ``tta``-view outputs
    evaluated here and for the single-view outputs of ``predict`` and the app: temperatures
    (``calibration.json``) and the thresholds that reach ``screening_sensitivity`` on the
    probabilities shown, calibrated when scaling is on (``operating_points.json``). One pass:
    view 0 of the TTA views is the image itself."""
    from ham_utils.evaluation.scoring import (
        apply_temperature,
        fit_temperature,
        threshold_for_sensitivity,
    )

    params = run.params
    val = _split_set(run, "val", evaluation.root, progress)
    views = predict_views(model, val.images, params.batch_size, params.tta, progress)
    outputs = {1: views[0], params.tta: views.astype(np.float64).mean(axis=0)}
    temperatures = (
        {v: fit_temperature(p, val.labels) for v, p in outputs.items()}
        if params.temperature_scaling
        else {}
    )
    if temperatures:
        evaluation.write_calibration(temperatures, len(val.labels))
    truth = _screening_truth(val.labels, run.classes)
    thresholds = {}
    for v, p in outputs.items():
        shown = apply_temperature(p, temperatures[v]) if temperatures else p
        scores = screening_scores(shown, run.classes)
        thresholds[v] = {
            name: threshold_for_sensitivity(truth[name], scores[name], params.screening_sensitivity)
            for name in scores
        }
    evaluation.write_operating_points(
        params.screening_sensitivity, thresholds, bool(temperatures), len(val.labels)
    )
    extractor, detector = _fit_ood(model, run, evaluation, val, progress)
    return Fitted(
        temperatures.get(params.tta),
        thresholds[params.tta],
        params.screening_sensitivity,
        detector,
        extractor,
    )


def _fit_ood(
    model: Any, run: Run, evaluation: Evaluation, val: EvaluationSet, progress: bool
) -> tuple[Any, Any]:
    """The out-of-distribution detector: fitted on (at most 3,000) training images' features,
    its threshold set to flag ``ood_flag_rate`` of the validation images; saved."""
    from ham_utils.evaluation.ood import FeatureExtractor, fit_detector, fit_subset

    params = run.params
    extractor = FeatureExtractor(model)
    train = _split_set(run, "train", evaluation.root, progress)
    subset = fit_subset(len(train.labels), params.seed)
    train_features = extractor.features(train.images[subset], params.batch_size)
    val_features = extractor.features(val.images, params.batch_size)
    detector = fit_detector(train_features, val_features, params.ood_flag_rate, extractor)
    detector.save(evaluation.ood_file)
    return extractor, detector


def _screening_inputs(
    labels: np.ndarray, probs: np.ndarray, fitted: Fitted, run: Run
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The screening scores of the probabilities a user is shown (temperature-scaled when a
    temperature was fitted), and which images are positive for each."""
    from ham_utils.evaluation.scoring import apply_temperature

    shown = apply_temperature(probs, fitted.temperature) if fitted.temperature else probs
    return screening_scores(shown, run.classes), _screening_truth(labels, run.classes)


def _operating_points(
    labels: np.ndarray, probs: np.ndarray, fitted: Fitted, counts: np.ndarray, run: Run
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validation-chosen thresholds applied once to this set: sensitivity, specificity
    and cases flagged per 100, and their intervals."""
    from ham_utils.evaluation.bootstrap import flag_intervals
    from ham_utils.evaluation.scoring import operating_point

    scores, truth = _screening_inputs(labels, probs, fitted, run)
    points, intervals = {"target_sensitivity": fitted.target_sensitivity}, {}
    for name, threshold in fitted.thresholds.items():
        if threshold is None:
            points[name] = None
            continue
        points[name] = operating_point(truth[name], scores[name], threshold)
        flagged = scores[name] >= threshold
        for key, interval in flag_intervals(truth[name], flagged, counts).items():
            intervals[f"screening_{name}_{key}"] = interval
    return points, intervals


def _ood_record(
    flagged: np.ndarray, labels: np.ndarray, probs: np.ndarray, fitted: Fitted, run: Run
) -> dict[str, Any]:
    """What the out-of-distribution check withholds on this set: the share of images, the
    count per class (are melanomas among them?), and each screening operating point's
    sensitivity when a withheld image counts as missed, as it is for a user who is given no
    risk level for it."""
    from ham_utils.evaluation.scoring import operating_point

    scores, truth = _screening_inputs(labels, probs, fitted, run)
    end_to_end = {}
    for name, threshold in fitted.thresholds.items():
        if threshold is None:
            continue
        screened = np.where(flagged, -np.inf, scores[name])  # withheld: never screened positive
        point = operating_point(truth[name], screened, threshold)
        end_to_end[name] = {
            "sensitivity": point["sensitivity"],
            "positives": int(truth[name].sum()),
            "positives_withheld": int((truth[name] & flagged).sum()),
        }
    return {
        "flag_rate_on_validation": fitted.ood.flag_rate,
        "threshold": fitted.ood.threshold,
        "flagged": float(flagged.mean()),
        "flagged_by_class": {
            name: {"images": int((labels == i).sum()), "flagged": int(flagged[labels == i].sum())}
            for i, name in enumerate(run.classes)
        },
        "screening_end_to_end": end_to_end,
    }


def _evaluate_set(
    model: Any, run: Run, which: str, data: EvaluationSet, fitted: Fitted, progress: bool
) -> dict[str, Any]:
    from ham_utils.evaluation.bootstrap import bootstrap_intervals, resample_counts
    from ham_utils.evaluation.scoring import (
        apply_temperature,
        evaluation_metrics,
        expected_calibration_error,
        selective_summary,
    )

    params = run.params
    temperature = fitted.temperature
    probs = predict_probabilities(model, data.images, params.batch_size, params.tta, progress)
    data.out_dir.mkdir(parents=True, exist_ok=True)
    table = predictions_table(data.image_ids, data.labels, probs, run.classes)
    table.to_csv(data.out_dir / PREDICTIONS_FILE, index=False)
    metrics = evaluation_metrics(data.labels, probs, run.classes)
    counts = resample_counts(len(data.labels), groups=data.groups)
    metrics["uncertainty"] = bootstrap_intervals(
        data.labels, probs, run.classes, data.groups, counts=counts
    )
    points, intervals = _operating_points(data.labels, probs, fitted, counts, run)
    metrics["operating_points"] = points
    metrics["uncertainty"]["intervals"].update(intervals)
    metrics["selective"] = selective_summary(data.labels, probs)
    if fitted.ood is not None:
        flagged = fitted.ood.flags(fitted.features.features(data.images, params.batch_size))
        metrics["out_of_distribution"] = _ood_record(flagged, data.labels, probs, fitted, run)
    subgroups = None
    if data.metadata is not None:
        from ham_utils.evaluation.subgroups import as_records, subgroup_table

        subgroups = subgroup_table(data.metadata, data.labels, probs, run.classes, data.groups)
        metrics["subgroups"] = as_records(subgroups)
    metrics.update(
        {
            "set": data.name,
            "source": data.source,
            "run": run.name,
            "model": which,
            "synthetic_data": run.synthetic,
            "tta_views": params.tta,
            "temperature": temperature,
            "ece_after_temperature": None
            if temperature is None
            else expected_calibration_error(data.labels, apply_temperature(probs, temperature)),
        }
    )
    (data.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    _write_figures(data, probs, metrics, run, counts)
    if subgroups is not None:
        from ham_utils.figures.evaluation import plot_subgroups

        plot_subgroups(subgroups, data.out_dir / FIGURES_DIR / "subgroups.png")
    log.info(
        "%s (%s model): balanced accuracy %.3f, macro F1 %.3f on %d images",
        data.name,
        which,
        metrics["balanced_accuracy"],
        metrics["macro_f1"],
        metrics["n_images"],
    )
    return metrics


EVALUATED_SPLITS = ("train", "val", "test")  # train: the out-of-distribution check's fit


def check_inputs(run: Run, external: str, progress: bool = True) -> GroundTruth | None:
    """Every input an evaluation reads, checked before it writes anything: the images of the
    run's train, validation and test splits under ``data_dir``, and the external set (read,
    its images checked) when one is given."""
    from ham_utils.data.split import check_images_found

    splits = run.splits()
    for split in EVALUATED_SPLITS:
        rows = splits[splits["split"] == split]
        if rows.empty:
            raise DataError(f"{run.path / SPLITS_FILE} has no {split!r} rows")
        check_images_found(rows, run.params.resolved_data_dir, run.path / SPLITS_FILE)
    return read_external(external, progress) if external else None


def evaluate_run(
    run: Run, external: str | None = None, which: str = "best", progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Evaluate one model of ``run`` on its test split (and ``external``, an ISIC 2018 ground
    truth CSV or its folder; default ``external_dir``, a setting of this machine). Returns
    metrics by set.

    All or nothing: every input is checked first, the new evaluation is written into a folder
    beside the model's evaluation folder and swapped in at the end, so that a failure at any
    point leaves the previous evaluation whole. What it does not replace stays: Grad-CAM
    overlays, and an external set's results when no external set is given this time. Tracking
    comes last and never decides whether the evaluation is kept."""
    from ham_utils.evaluation.model_card import write_model_card

    final = run.evaluation(which)
    restore_interrupted(final.root)
    external = external if external is not None else run.params.external_dir
    truth = check_inputs(run, external, progress)
    model = run.load_model(which)
    staging = Evaluation(staging_dir(final.root), which)
    shutil.rmtree(staging.root, ignore_errors=True)  # left by an evaluation that was killed
    staging.root.mkdir(parents=True)
    try:
        fitted = fit_on_validation(model, run, staging, progress)
        test = _split_set(run, "test", staging.root, progress)
        results = {"test": _evaluate_set(model, run, which, test, fitted, progress)}
        if truth is not None:
            data = _external_set(run, truth, staging, progress)
            results[EXTERNAL_SET] = _evaluate_set(model, run, which, data, fitted, progress)
        elif final.set_dir(EXTERNAL_SET).is_dir():
            shutil.copytree(final.set_dir(EXTERNAL_SET), staging.set_dir(EXTERNAL_SET))
            log.warning(
                "no external set given: the external set's results of the previous evaluation "
                "are kept in %s, made with its calibration and thresholds (give --external to "
                "evaluate it again with this one's)",
                final.set_dir(EXTERNAL_SET),
            )
        write_model_card(run, which, staging)
        replace_folder(staging.root, final.root, keep=(GRADCAM_DIR,))
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    log.info("evaluation of the %s model: %s", which, final.root)
    if run.params.track:
        from ham_utils.train.tracking import log_evaluation

        log_evaluation(run, which, {name: final.set_dir(name) for name in results}, results)
    return results
