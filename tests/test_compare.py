"""Comparing runs: paired bootstrap differences with known answers, and refusals."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

from ham_utils.config import CLASSES, load_params
from ham_utils.errors import DataError
from ham_utils.studies.compare import (
    NotComparable,
    comparable_runs,
    compare,
    holm,
    paired_p_value,
)

MEL, NV = CLASSES.index("mel"), CLASSES.index("nv")


def evaluated_run(
    folder, name, labels, predicted, image_ids=None, data_dir="/data/HAM10000", **params
):
    """A finished run folder with test predictions (no model: comparing reads only these)."""
    run = folder / name
    evaluation = run / "evaluation" / "best"
    evaluation.mkdir(parents=True)
    image_ids = (
        image_ids if image_ids is not None else [f"ISIC_{i:07d}" for i in range(len(labels))]
    )
    settings = load_params(None, {"run_name": name, "data_dir": data_dir, **params}).as_dict()
    (run / "params.yaml").write_text(yaml.safe_dump(settings))
    (run / "classes.json").write_text(json.dumps(list(CLASSES)))
    (run / "state.json").write_text(json.dumps({"finished": True}))
    (run / "splits.json").write_text(json.dumps({"synthetic": False}))
    split = pd.DataFrame({"image_id": image_ids, "lesion_id": [f"L{i}" for i in image_ids]})
    split.assign(dx=[CLASSES[c] for c in labels], split="test").to_csv(run / "splits.csv")
    probs = np.full((len(labels), len(CLASSES)), 0.02)
    probs[np.arange(len(labels)), predicted] = 0.88
    table = pd.DataFrame(probs, columns=[f"p_{c}" for c in CLASSES])
    table.insert(0, "true", [CLASSES[c] for c in labels])
    table.insert(0, "image_id", image_ids)
    table.to_csv(evaluation / "predictions.csv", index=False)
    (evaluation / "metrics.json").write_text(json.dumps({"tta_views": 1}))
    return run


def melanoma_case(folder, n_mel=200, n_nv=800, only_a=30, only_b=10, neither=80, shuffle=0):
    """Two runs right on every nevus; of the melanomas, ``only_a`` are found by A alone,
    ``only_b`` by B alone, ``neither`` by neither, the rest by both. The sensitivity
    difference B - A is exactly (only_b - only_a) / n_mel."""
    labels = np.array([MEL] * n_mel + [NV] * n_nv)
    a, b = labels.copy(), labels.copy()
    b[:only_a] = NV  # A right, B wrong
    a[only_a : only_a + only_b] = NV  # A wrong, B right
    missed = slice(only_a + only_b, only_a + only_b + neither)
    a[missed] = b[missed] = NV
    order = np.random.default_rng(shuffle).permutation(len(labels))
    ids = np.array([f"ISIC_{i:07d}" for i in range(len(labels))])
    rows_of_b = order[::-1]  # B's file lists the images in another order: pairing is by id
    return (
        evaluated_run(folder, "a", labels[order], a[order], ids[order], loss="crossentropy"),
        evaluated_run(folder, "b", labels[rows_of_b], b[rows_of_b], ids[rows_of_b], loss="focal"),
    )


def test_paired_difference_has_the_known_value_spread_and_p_value(tmp_path):
    a, b = melanoma_case(tmp_path, only_a=30, only_b=10)
    comparison = compare([a, b], resamples=2000)
    rows = comparison.differences.set_index("metric")
    sensitivity = rows.loc["melanoma_sensitivity"]
    assert sensitivity["difference"] == pytest.approx((10 - 30) / 200)
    # Two classes are present and nevi are all right: balanced accuracy moves by half as much.
    assert rows.loc["balanced_accuracy", "difference"] == pytest.approx(-0.05)
    # The paired spread of a difference of proportions (McNemar's setting):
    # var = (b + c) / n^2 - (b - c)^2 / n^3 with b, c the discordant counts among n melanomas.
    expected_sd = np.sqrt(40 / 200**2 - 20**2 / 200**3)
    width = sensitivity["high"] - sensitivity["low"]
    assert width == pytest.approx(2 * 1.96 * expected_sd, rel=0.15)
    assert sensitivity["high"] < 0 and sensitivity["p_value"] < 0.01

    # Each run's own intervals are those its evaluation computed: the same resamples of
    # the images in the order of the first run's predictions.
    from ham_utils.evaluation.bootstrap import bootstrap_intervals
    from ham_utils.evaluation.evaluate import read_predictions

    _, labels, probs = read_predictions(a / "evaluation" / "best" / "predictions.csv")
    own = bootstrap_intervals(labels, probs, resamples=2000)["intervals"]["balanced_accuracy"]
    row = comparison.metrics.set_index(["run", "metric"]).loc[("a", "balanced_accuracy")]
    assert [row["low"], row["high"]] == pytest.approx(own)

    # Unpaired intervals of the two runs overlap although the difference is clear: what
    # pairing is for.
    metrics = comparison.metrics.set_index(["run", "metric"])
    assert (
        metrics.loc[("a", "melanoma_sensitivity"), "low"]
        < metrics.loc[("b", "melanoma_sensitivity"), "high"]
    )


def test_identical_and_symmetric_runs_show_no_difference(tmp_path):
    a, b = melanoma_case(tmp_path, only_a=20, only_b=20)
    rows = compare([a, b], resamples=1000).differences.set_index("metric")
    sensitivity = rows.loc["melanoma_sensitivity"]
    assert sensitivity["difference"] == pytest.approx(0)
    assert sensitivity["low"] < 0 < sensitivity["high"]
    assert sensitivity["low"] == pytest.approx(-sensitivity["high"], abs=0.02)
    assert sensitivity["p_value"] > 0.5

    same = evaluated_run(tmp_path, "same", *_labels_and_calls(a))
    rows = compare([a, same]).differences
    assert (rows["difference"] == 0).all() and (rows["low"] == 0).all()
    assert (rows["p_value"] == 1).all()


def _labels_and_calls(run):
    table = pd.read_csv(run / "evaluation" / "best" / "predictions.csv")
    labels = table["true"].map(CLASSES.index).to_numpy()
    calls = table[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(1)
    return labels, calls, table["image_id"].tolist()


def test_p_value_and_holm_by_hand():
    assert paired_p_value(np.array([-1.0] * 999)) == pytest.approx(2 / 1000)
    assert paired_p_value(np.zeros(10)) == 1
    assert paired_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_a_p_value_at_the_bootstraps_floor_is_shown_as_at_most_the_floor():
    from ham_utils.studies.compare import format_p, smallest_p

    floor = paired_p_value(np.full(999, 0.5))  # every resample on one side
    assert floor == pytest.approx(smallest_p(999)) == pytest.approx(0.002)
    assert format_p(floor, 999) == "≤ 0.002"
    assert format_p(0.004, 999) == "0.004" and format_p(float("nan"), 999) == "nan"


def test_holm_leaves_a_missing_p_value_missing_and_does_not_count_it():
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    assert np.isnan(holm([np.nan, np.nan])).all()
    assert holm([]).shape == (0,)


def test_runs_on_different_splits_or_data_are_refused(tmp_path):
    a, _ = melanoma_case(tmp_path)
    labels, calls, ids = _labels_and_calls(a)
    other_split = evaluated_run(tmp_path, "other_split", labels[5:], calls[5:], ids[5:])
    with pytest.raises(NotComparable, match="different splits"):
        compare([a, other_split])
    other_data = evaluated_run(
        tmp_path, "other_data", labels, calls, ids, data_dir="/data/ISIC2019"
    )
    with pytest.raises(NotComparable, match="different data"):
        compare([a, other_data])
    # The same images under another path (another machine) are the same data.
    moved = evaluated_run(tmp_path, "moved", labels, calls, ids, data_dir="/mnt/x/HAM10000")
    assert len(compare([a, moved]).runs) == 2

    kept, left_out = comparable_runs(a, runs_root=tmp_path)
    assert sorted(p.name for p in kept) == ["a", "b", "moved"]
    assert set(left_out) == {"other_split", "other_data"}

    result = run_cli(tmp_path / "project", "compare", str(a), str(other_split))
    assert result.returncode == 2
    assert "cannot compare" in result.stderr and "different splits" in result.stderr


def test_a_run_and_its_copy_elsewhere_are_told_apart(tmp_path):
    import shutil

    a, _ = melanoma_case(tmp_path / "colab")
    copy = tmp_path / "laptop" / "runs" / "a"
    shutil.copytree(a, copy)
    comparison = compare([a, copy], resamples=50)
    labels = [s.label for s in comparison.runs]
    assert labels == ["colab/a", "runs/a"]
    assert comparison.metrics_table().index.tolist() == labels
    assert list(comparison.parameters.columns) in ([], labels)
    assert (comparison.differences["difference"] == 0).all()


def test_one_run_is_one_run_in_the_printed_comparison(tmp_path, capsys):
    from ham_utils.cli import main

    a, _ = melanoma_case(tmp_path)
    assert main(["compare", str(a), "--resamples", "50"]) == 0
    assert capsys.readouterr().out.startswith("1 run (best model) on ")


def test_a_run_without_test_predictions_says_how_to_make_them(tmp_path):
    a, b = melanoma_case(tmp_path)
    (b / "evaluation" / "best" / "predictions.csv").unlink()
    with pytest.raises(DataError, match="ham_utils evaluate --run"):
        compare([a, b])


def test_cli_prints_the_differing_parameters_metrics_and_differences(tmp_path):
    a, b = melanoma_case(tmp_path)
    out = tmp_path / "out"
    result = run_cli(tmp_path / "project", "compare", str(a), str(b), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "Parameters that differ" in text and "crossentropy" in text
    assert "run_name" not in text  # the labels already say it
    assert "melanoma sensitivity" in text and "-0.100 [" in text
    differences = pd.read_csv(out / "differences.csv")
    assert set(differences["metric"]) == {
        "balanced_accuracy",
        "macro_roc_auc",
        "melanoma_sensitivity",
        "melanoma_sensitivity_at_specificity_0.90",
    }
    for name in ("comparison.png", "differences.png"):
        assert (out / name).stat().st_size > 10_000
