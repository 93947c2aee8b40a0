"""The model card is generated from the run's files: its figures are the evaluation's."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ham_utils.config import CLASSES
from ham_utils.evaluation.bootstrap import bootstrap_intervals, with_interval
from ham_utils.evaluation.model_card import NOT_A_DEVICE, model_card, write_model_card
from ham_utils.evaluation.scoring import evaluation_metrics
from ham_utils.evaluation.subgroups import as_records, subgroup_table
from ham_utils.runs import open_run


def _evaluated(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    rng = np.random.default_rng(1)
    y = rng.integers(0, len(CLASSES), 240)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 240)
    probs[np.arange(240), y] += 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    metrics = evaluation_metrics(y, probs)
    metrics["uncertainty"] = bootstrap_intervals(y, probs)
    metadata = pd.DataFrame(
        {"sex": np.where(np.arange(240) < 200, "male", "female"), "age": 50.0,
         "localization": "back", "dx_type": "histo"}
    )  # fmt: skip
    metrics["subgroups"] = as_records(subgroup_table(metadata, y, probs))
    metrics.update(source="the run's test split", tta_views=2, temperature=None)
    run = open_run(run_dir)
    evaluation = run.evaluation("best")
    evaluation.root.mkdir(parents=True)
    evaluation.metrics_file().write_text(json.dumps(metrics))
    return run, metrics


def test_the_card_carries_the_evaluations_figures_and_the_disclaimers(tiny_run, tmp_path):
    run, metrics = _evaluated(tiny_run, tmp_path)
    card = model_card(run)
    interval = metrics["uncertainty"]["intervals"]["balanced_accuracy"]
    value = with_interval(metrics["balanced_accuracy"], interval)
    assert f"| balanced accuracy (ISIC 2018 metric) | {value} |" in card
    assert card.count(NOT_A_DEVICE) == 2 and "SYNTHETIC" in card
    assert "240 images: the run's test split. 2 test-time view(s)" in card
    assert "Too small to read (under 30 images)" not in card  # 200 and 40 images
    assert "lowest for sex" in card and "No temperature scaling" in card
    path = write_model_card(run)
    assert path.read_text() == card and path.name == "MODEL_CARD.md"


def test_the_card_says_what_its_intervals_resample_and_what_they_leave_out(tiny_run, tmp_path):
    run, metrics = _evaluated(tiny_run, tmp_path)
    metrics["operating_points"] = {
        "target_sensitivity": 0.9,
        "melanoma": {"threshold": 0.1, "sensitivity": 0.9, "specificity": 0.64,
                     "flagged_per_100": 35.5994},
    }  # fmt: skip
    metrics["uncertainty"]["intervals"]["screening_melanoma_flagged_per_100"] = [32.645, 38.551]
    run.evaluation("best").metrics_file().write_text(json.dumps(metrics))
    card = model_card(run)
    assert "(1,000 resamples of the images, one per lesion)" in card
    assert "| P(melanoma) | 0.100 | 0.900 | 0.640 | 35.6 [32.6, 38.6] |" in card
    assert "treat each threshold as fixed" in card
    assert "| expected calibration error (its bootstrap range runs high: not a confidence" in card


def test_the_card_follows_the_files_not_a_template(tiny_run, tmp_path):
    run, metrics = _evaluated(tiny_run, tmp_path)
    metrics["balanced_accuracy"] = 0.123456
    run.evaluation("best").metrics_file().write_text(json.dumps(metrics))
    assert "| balanced accuracy (ISIC 2018 metric) | 0.123 [" in model_card(run)


def test_no_card_before_an_evaluation(tiny_run):
    with pytest.raises(FileNotFoundError, match="evaluate --which last"):
        model_card(open_run(tiny_run), "last")


def test_the_external_set_gets_its_screening_point_and_what_the_check_withheld(tiny_run, tmp_path):
    run, metrics = _evaluated(tiny_run, tmp_path)
    external = {
        **metrics,
        "source": "ISIC 2018 Task 3 test images",
        "operating_points": {
            "target_sensitivity": 0.9,
            "melanoma": {"threshold": 0.1, "sensitivity": 0.7, "specificity": 0.5,
                         "flagged_per_100": 52.04},
        },
        "out_of_distribution": {
            "flag_rate_on_validation": 0.05, "threshold": 4.7, "flagged": 0.412,
            "flagged_by_class": {"mel": {"images": 10, "flagged": 4},
                                 "nv": {"images": 230, "flagged": 95}},
            "screening_end_to_end": {
                "melanoma": {"sensitivity": 0.4, "positives": 10, "positives_withheld": 4}
            },
        },
    }  # fmt: skip
    path = run.evaluation("best").metrics_file("external")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(external))
    card = model_card(run)
    section = card[card.index("## External test set") :]
    assert (
        "### Screening operating point" in section and "| P(melanoma) | 0.100 | 0.700 |" in section
    )
    assert "on this set it flagged 41.2% of the images" in section
    assert "Withheld by class: mel 4 of 10, nv 95 of 230." in section
    assert "sensitivity 0.400 (4 of 10 positives withheld)" in section
