"""Evaluation pieces that need no trained run: TTA views, ground-truth lookup, run lookup."""

import numpy as np
import pytest
from conftest import run_cli

from ham_utils.errors import DataError
from ham_utils.evaluation.evaluate import (
    find_ground_truth,
    predictions_table,
    read_predictions,
    tta_views,
)
from ham_utils.runs import open_run


def test_tta_views_are_the_distinct_symmetries_of_the_square():
    image = np.arange(3 * 3 * 3, dtype=np.uint8).reshape(1, 3, 3, 3)  # no symmetry of its own
    views = tta_views(image, 8)
    assert len(views) == 8
    assert len({v.tobytes() for v in views}) == 8
    np.testing.assert_array_equal(views[0], image)
    assert all(v.shape == image.shape for v in views)
    # every view is a permutation of the same pixels
    assert all(sorted(v.ravel()) == sorted(image.ravel()) for v in views)
    assert [len(tta_views(image, n)) for n in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(ValueError, match=r"one of \(1, 2, 4, 8\), got 3"):
        tta_views(image, 3)


def test_predictions_round_trip(tmp_path):
    classes = ("a", "b", "c")
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    table = predictions_table(np.array(["x", "y"]), np.array([0, 1]), probs, classes)
    assert table["predicted"].tolist() == ["a", "c"]
    table.to_csv(tmp_path / "p.csv", index=False)
    ids, labels, back = read_predictions(tmp_path / "p.csv", classes)
    assert ids.tolist() == ["x", "y"] and labels.tolist() == [0, 1]
    np.testing.assert_allclose(back, probs)


def test_ground_truth_is_found_in_a_folder_or_refused_with_the_candidates(tmp_path):
    csv = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    csv.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n")
    assert find_ground_truth(tmp_path) == csv
    assert find_ground_truth(csv) == csv
    (tmp_path / "ISIC2018_Task3_Validation_GroundTruth.csv").write_text("")
    with pytest.raises(DataError, match="expected one"):
        find_ground_truth(tmp_path)
    with pytest.raises(DataError, match="not found"):
        find_ground_truth(tmp_path / "missing")


def test_unfinished_or_missing_runs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        open_run(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "state.json").write_text('{"finished": false}')
    with pytest.raises(DataError, match="has not finished"):
        open_run(tmp_path)


def test_evaluate_without_any_run_says_how_to_make_one(project_root):
    result = run_cli(project_root, "evaluate")
    assert result.returncode == 2
    assert "no finished run" in result.stderr and "train" in result.stderr


def test_what_the_ood_check_withholds_is_counted_per_class_and_as_missed_cases():
    from types import SimpleNamespace

    from ham_utils.config import CLASSES
    from ham_utils.evaluation.evaluate import Fitted, _ood_record

    mel, nv = CLASSES.index("mel"), CLASSES.index("nv")
    labels = np.array([mel] * 4 + [nv] * 6)
    probs = np.full((10, len(CLASSES)), 0.02)
    probs[:4, mel] = 0.88  # every melanoma above the threshold...
    probs[4:, nv] = 0.88
    flagged = np.array([True, True, False, False, True, False, False, False, False, False])
    fitted = Fitted(
        None,
        {"melanoma": 0.5, "high_risk": None},
        0.9,
        SimpleNamespace(flag_rate=0.05, threshold=3),
    )
    record = _ood_record(flagged, labels, probs, fitted, SimpleNamespace(classes=CLASSES))
    assert record["flagged"] == pytest.approx(0.3)
    assert record["flagged_by_class"]["mel"] == {"images": 4, "flagged": 2}
    assert record["flagged_by_class"]["nv"] == {"images": 6, "flagged": 1}
    # ...but two are withheld: a user is told nothing about them, so they are missed.
    assert record["screening_end_to_end"] == {
        "melanoma": {"sensitivity": 0.5, "positives": 4, "positives_withheld": 2}
    }
    from ham_utils.report.notebook import ood_summary

    summary = ood_summary({"out_of_distribution": record})  # notebook 04's sentence
    assert "on this set it flags 30.0%" in summary and "mel 2 of 4, nv 1 of 6" in summary
    assert "counted as missed: 0.500 (2 of 4 melanomas withheld)" in summary
