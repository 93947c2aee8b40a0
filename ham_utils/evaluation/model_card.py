"""``MODEL_CARD.md`` for one evaluated model of a run, generated from the run's own files.

Sections after Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): model
details, intended use, data, evaluation with intervals, calibration, operating point,
subgroups, the external set when there is one, limitations. Nothing in it is written by
hand: every figure is read from ``params.yaml``, ``splits.json``, ``state.json``,
``environment.json`` and the evaluation's ``metrics.json`` (:mod:`ham_utils.runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ham_utils.evaluation.bootstrap import (
    headline_rows,
    resampling_words,
    screening_cell,
    with_interval,
)
from ham_utils.evaluation.subgroups import MIN_READABLE
from ham_utils.runs import ENVIRONMENT_FILE, EXTERNAL_SET, SPLIT_INFO_FILE, Evaluation, Run

MODEL_CARD_FILE = "MODEL_CARD.md"
NOT_A_DEVICE = (
    "**Not a medical device.** This model is research software. It has not been validated "
    "for clinical use and must not be used to diagnose, to decide on treatment or to "
    "reassure anyone about a skin lesion."
)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    return [f"| {label} | {with_interval(v, i)} |" for label, v, i in headline_rows(metrics)]


def _evaluation_section(title: str, metrics: dict[str, Any]) -> list[str]:
    lines = [
        f"## {title}",
        "",
        f"{metrics['n_images']} images: {metrics.get('source', 'source not recorded')}. "
        f"{metrics.get('tta_views', 1)} test-time view(s); 95% bootstrap intervals in brackets "
        f"({resampling_words(metrics.get('uncertainty', {}))}).",
        "",
        "| metric | value [95% interval] |",
        "|---|---|",
        *_metric_rows(metrics),
        "",
    ]
    recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in metrics["per_class"].items())
    lines += [f"Recall by class: {recall}.", ""]
    return lines


def _calibration_lines(metrics: dict[str, Any]) -> list[str]:
    temperature = metrics.get("temperature")
    if temperature is None:
        return ["No temperature scaling: the probabilities are the network's own.", ""]
    return [
        f"Temperature {temperature:.2f}, fitted on the validation split: expected calibration "
        f"error {metrics['ece']:.3f} before, {metrics['ece_after_temperature']:.3f} after.",
        "",
    ]


SCREENING_SCORES = (("melanoma", "P(melanoma)"), ("high_risk", "P(mel) + P(bcc)"))


def _operating_point_lines(metrics: dict[str, Any], heading: str = "##") -> list[str]:
    points = metrics.get("operating_points")
    if not points:
        return []
    intervals = metrics.get("uncertainty", {}).get("intervals", {})
    lines = [
        f"{heading} Screening operating point",
        "",
        f"Thresholds chosen on the validation split to catch {points['target_sensitivity']:.0%} "
        f"of its cases, applied once to this set ({metrics['n_images']} images). The intervals "
        "treat each threshold as fixed: they leave out how much choosing it on another "
        "validation split would move it.",
        "",
        "| score | threshold | sensitivity | specificity | flagged per 100 |",
        "|---|---|---|---|---|",
    ]
    for name, label in SCREENING_SCORES:
        point = points.get(name)
        if point is None:
            continue
        cells = [
            screening_cell(point, intervals, name, key)
            for key in ("sensitivity", "specificity", "flagged_per_100")
        ]
        lines.append(f"| {label} | {point['threshold']:.3f} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _subgroup_lines(metrics: dict[str, Any]) -> list[str]:
    rows = metrics.get("subgroups")
    if not rows:
        return []
    readable = [r for r in rows if not r["too_small"] and r["balanced_accuracy"] is not None]
    lines = ["## Subgroups", ""]
    if readable:
        worst = min(readable, key=lambda r: r["balanced_accuracy"])
        best = max(readable, key=lambda r: r["balanced_accuracy"])
        lines.append(
            f"Among subgroups of {MIN_READABLE} or more test images, balanced accuracy is "
            "lowest for "
            f"{worst['variable']} {worst['subgroup']} "
            f"({with_interval(worst['balanced_accuracy'], worst['balanced_accuracy_interval'])}"
            f", n={worst['images']}) and highest for {best['variable']} {best['subgroup']} "
            f"({with_interval(best['balanced_accuracy'], best['balanced_accuracy_interval'])}"
            f", n={best['images']})."
        )
    small = [f"{r['variable']} {r['subgroup']} (n={r['images']})" for r in rows if r["too_small"]]
    if small:
        lines.append(f"Too small to read (under {MIN_READABLE} images): {', '.join(small)}.")
    return [*lines, "", "The full table and forest plot: `figures/subgroups.png`.", ""]


def _ood_lines(metrics: dict[str, Any], heading: str = "##") -> list[str]:
    ood = metrics.get("out_of_distribution")
    if not ood:
        return []
    lines = [
        f"{heading} Images the model should not judge",
        "",
        "An out-of-distribution check on the backbone's features (`ham_utils.evaluation.ood`) "
        "withholds the risk level for images unlike the training images. Its threshold flags "
        f"{ood['flag_rate_on_validation']:.0%} of the validation lesions; on this set it "
        f"flagged {ood['flagged']:.1%} of the images.",
    ]
    by_class = ood.get("flagged_by_class")
    if by_class:
        counts = ", ".join(f"{c} {v['flagged']} of {v['images']}" for c, v in by_class.items())
        lines.append(f"Withheld by class: {counts}.")
    for name, label in SCREENING_SCORES:
        point = ood.get("screening_end_to_end", {}).get(name)
        if point and point["sensitivity"] is not None:
            lines.append(
                f"Screening on {label}, a withheld image counted as missed: sensitivity "
                f"{point['sensitivity']:.3f} ({point['positives_withheld']} of "
                f"{point['positives']} positives withheld)."
            )
    return [*lines, ""]


def model_card(run: Run, which: str = "best", evaluation: Evaluation | None = None) -> str:
    """The model card of one evaluated model of ``run``, as Markdown (``evaluation``: the
    folder to read, default the model's own)."""
    evaluation = evaluation or run.evaluation(which)
    test = evaluation.metrics("test")
    if test is None:
        raise FileNotFoundError(
            f"{evaluation.metrics_file()} not found; run `python -m ham_utils evaluate "
            f"--which {which}` first"
        )
    params, state = run.params, run.state()
    split = _read_json(run.path / SPLIT_INFO_FILE)
    environment = _read_json(run.path / ENVIRONMENT_FILE)
    per_split = split.get("images_per_split", {})
    synthetic = run.synthetic
    data = (
        "the SYNTHETIC demo dataset (generated drawings in the HAM10000 layout): nothing here "
        "says anything about skin lesions"
        if synthetic
        else f"HAM10000 from `{split.get('data_dir', params.data_dir)}`"
    )
    stop = (
        f"stopped early after {state.epochs_done} epochs"
        if state.stopped_early
        else f"all {state.epochs_done} epochs"
    )
    lines = [
        f"# Model card: {run.name} ({which} model)",
        "",
        NOT_A_DEVICE,
        "",
    ]
    if synthetic:
        lines += ["**Trained and evaluated on SYNTHETIC data; its figures mean nothing.**", ""]
    lines += [
        "## Model",
        "",
        f"- {params.backbone} at {params.image_size} px, weights `{params.weights}`, head "
        f"`{params.head}`; input RGB 0..255, output 7 class probabilities "
        f"({', '.join(run.classes)}).",
        f"- Trained with loss `{params.loss}` (gamma {params.focal_gamma}), class weights "
        f"^{params.class_weight_power}, oversampling `{params.oversampling}`, MixUp/CutMix "
        f"{params.mixup_prob}/{params.cutmix_prob}; {params.warmup_epochs} warm-up + "
        f"{params.finetune_epochs} fine-tune epochs planned, {stop}; the {which} model is "
        + (
            f"epoch {state.best_epoch + 1} by `{params.monitor}` on validation."
            if which == "best" and state.best_epoch >= 0
            else "the last epoch."
        ),
        f"- Keras {environment.get('keras', '?')} on {environment.get('backend', '?')}, "
        f"{environment.get('device', '?')}, precision policy "
        f"`{environment.get('precision_policy', '?')}`. Recipe: `params.yaml` in the run.",
        "",
        "## Intended use",
        "",
        "Research on automated classification of dermatoscopic images into the seven HAM10000 "
        "classes: comparing recipes, studying errors and calibration. Not for patients, "
        "clinicians' decisions or screening in practice.",
        "",
        "## Data",
        "",
        f"- {data}.",
        f"- {split.get('images', '?')} images of {split.get('lesions', '?')} lesions, split by "
        f"lesion (seed {split.get('seed', params.seed)}): train {per_split.get('train', '?')}, "
        f"validation {per_split.get('val', '?')}, test {per_split.get('test', '?')} images"
        + (
            " (one image per lesion in validation and test)."
            if split.get("one_image_per_lesion_eval", params.one_image_per_lesion_eval)
            else "."
        ),
        f"- {split.get('dropped_rows', 0)} metadata rows dropped while reading (listed in "
        "`dropped_rows.csv`).",
        "",
        *_evaluation_section("Test split (looked at once)", test),
        "## Calibration",
        "",
        *_calibration_lines(test),
        *_operating_point_lines(test),
        *_subgroup_lines(test),
        *_ood_lines(test),
    ]
    external = evaluation.metrics(EXTERNAL_SET)
    if external is not None:
        lines += _evaluation_section("External test set", external)
        lines += _operating_point_lines(external, heading="###")
        lines += _ood_lines(external, heading="###")
    lines += [
        "## Limitations",
        "",
        "- HAM10000 comes from two centres (Vienna, Austria, and a practice in Queensland, "
        "Australia; Tschandl et al., Sci. Data 2018); performance on other populations, "
        "devices and skin types is unknown.",
        "- About two thirds of the images are nevi and some classes have a few dozen test "
        "lesions: their figures carry wide intervals.",
        "- Benign diagnoses are often confirmed by follow-up or consensus, not histopathology; "
        "labels carry that uncertainty.",
        "- The model sees one image; a clinician sees the patient, the history and the "
        "lesion's change over time.",
        "",
        NOT_A_DEVICE,
        "",
    ]
    return "\n".join(lines)


def write_model_card(run: Run, which: str = "best", evaluation: Evaluation | None = None) -> Path:
    """Write ``MODEL_CARD.md`` into the model's evaluation folder (or ``evaluation``'s); return
    its path."""
    evaluation = evaluation or run.evaluation(which)
    path = evaluation.root / MODEL_CARD_FILE
    path.write_text(model_card(run, which, evaluation))
    return path
