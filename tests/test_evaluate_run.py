"""Evaluating a run in this process: all or nothing, inputs checked first, tracking a side job.

A copy of the session's tiny run (EfficientNetB0 at 32 px, random weights) gets a split of
42 small synthetic images, so that one evaluation takes seconds: its figures are not drawn
(tests/test_report.py checks them) and its out-of-distribution check reads its first two
stages only (a Ledoit-Wolf fit of the top layer's 2,560 features takes half a minute here).
Faults are planted with monkeypatch.
"""

import hashlib
import json
import logging
import shutil

import pandas as pd
import pytest
from conftest import write_split

from ham_utils.errors import DataError
from ham_utils.evaluation import evaluate as evaluate_module
from ham_utils.evaluation import ood
from ham_utils.evaluation.evaluate import evaluate_run
from ham_utils.runs import Run, RunState, open_run
from ham_utils.train import tracking


def loaded_once(load_model):
    """``Run.load_model`` that loads each model once (and traces it once) for the module: every
    run here is a copy of the same tiny run."""
    models = {}

    def load(run, which="best"):
        if which not in models:
            models[which] = load_model(run, which)
        return models[which]

    return load


@pytest.fixture(scope="module")
def project(tiny_run, tmp_path_factory):
    """A project folder (cache, MLflow store) and an evaluable copy of the tiny run in it."""
    root = tmp_path_factory.mktemp("project")
    run_dir = root / "runs" / "tiny-evaluable"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("evaluation", "export"))
    data_dir = root / "HAM10000"
    write_split(run_dir, data_dir)
    history = {"epoch": [0, 1], "phase": [1, 2], "loss": [2.1, 1.9], "val_loss": [2.0, 1.95]}
    pd.DataFrame(history).to_csv(run_dir / "history.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_module, "_write_figures", lambda *args: None)
        patch.setattr(
            ood,
            "stage_layers",
            lambda model, first=0, stages=ood.stage_layers: stages(model, first)[:2],
        )
        patch.setattr(Run, "load_model", loaded_once(Run.load_model))
        patch.setenv("HAM_PROJECT_ROOT", str(root))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        run = open_run(run_dir).with_settings(data_dir=str(data_dir), track=False)
        evaluate_run(run, progress=False)
        yield root, run


def snapshot(folder):
    """Every file under ``folder`` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def evaluation_dir(run):
    return run.evaluation("best").root


def test_a_wrong_data_folder_is_refused_before_anything_is_deleted(project, tmp_path):
    _, run = project
    before = snapshot(evaluation_dir(run))
    assert {"calibration.json", "operating_points.json", "ood.npz"} <= set(before)
    with pytest.raises(DataError, match="point data_dir at the folder"):
        evaluate_run(run.with_settings(data_dir=str(tmp_path / "wrong")), progress=False)
    assert snapshot(evaluation_dir(run)) == before


def test_a_missing_external_set_is_reported_before_anything_is_predicted(project, monkeypatch):
    _, run = project
    before = snapshot(evaluation_dir(run))

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before the external set was checked")

    monkeypatch.setattr(evaluate_module, "predict_views", no_prediction)
    with pytest.raises(DataError, match=r"external test set .* not found"):
        evaluate_run(run, external="/nowhere/ISIC2018", progress=False)
    assert snapshot(evaluation_dir(run)) == before


def test_a_failure_during_evaluation_leaves_the_previous_one_whole(project, monkeypatch):
    """A fault at the last step, when everything else of the new evaluation is written."""
    from ham_utils.evaluation import model_card

    _, run = project
    folder = evaluation_dir(run)
    gradcam = folder / "gradcam" / "gradcam_mel.png"  # written by another command: kept
    gradcam.parent.mkdir(exist_ok=True)
    gradcam.write_bytes(b"png")
    before = snapshot(folder)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_card, "write_model_card", disk_full)
    with pytest.raises(OSError, match="disk full"):
        evaluate_run(run.with_settings(tta=2), progress=False)
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["best"]  # no half-made folder


def test_an_evaluation_replaces_the_previous_one_and_keeps_what_it_does_not_replace(project):
    _, run = project
    folder = evaluation_dir(run)
    (folder / "gradcam").mkdir(exist_ok=True)
    (folder / "gradcam" / "gradcam_nv.png").write_bytes(b"png")
    (folder / "external").mkdir(exist_ok=True)
    external = {**json.loads((folder / "metrics.json").read_text()), "set": "external"}
    (folder / "external" / "metrics.json").write_text(json.dumps(external))
    (folder / "stale.txt").write_text("a file of an older version")
    results = evaluate_run(run.with_settings(tta=2), progress=False)
    assert results["test"]["tta_views"] == 2
    assert json.loads((folder / "metrics.json").read_text())["tta_views"] == 2
    assert (folder / "gradcam" / "gradcam_nv.png").read_bytes() == b"png"
    assert json.loads((folder / "external" / "metrics.json").read_text()) == external
    assert "External test set" in (folder / "MODEL_CARD.md").read_text()
    assert not (folder / "stale.txt").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["best"]


def test_a_copied_runs_foreign_mlflow_run_is_recreated_and_tracking_never_loses_the_evaluation(
    project, monkeypatch, caplog, capsys
):
    """state.json names the MLflow run of the machine that trained it: the evaluation goes to a
    new MLflow run linked to the old id; a tracking failure is a warning, the evaluation kept."""
    import mlflow

    from ham_utils.cli import _run as run_of_arguments
    from ham_utils.cli import build_parser, main

    root, run = project
    state = RunState.load(run.path)
    state.mlflow_run_id = "0123456789abcdef0123456789abcdef"  # not in this store
    state.save(run.path)
    data = f"data_dir={run.params.data_dir}"
    caplog.set_level(logging.INFO, logger="ham_utils")
    assert main(["evaluate", "--run", str(run.path), "--set", data, "track=true"]) == 0
    assert "copied_from_mlflow_run_id=0123456789abcdef" in caplog.text
    new_id = RunState.load(run.path).mlflow_run_id
    assert new_id != state.mlflow_run_id
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    logged = client.get_run(new_id)
    assert logged.data.tags["copied_from_mlflow_run_id"] == state.mlflow_run_id
    assert logged.info.run_name == run.name and logged.data.params["image_size"] == "32"
    assert 0 <= logged.data.metrics["best_test_balanced_accuracy"] <= 1
    assert [a.path for a in client.list_artifacts(new_id, "evaluation/best")] == [
        "evaluation/best/test"
    ]

    caplog.clear()
    tracked = open_run(run.path).with_settings(data_dir=run.params.data_dir, track=True)
    results = {"test": json.loads((evaluation_dir(run) / "metrics.json").read_text())}
    out_dirs = {"test": evaluation_dir(run)}
    assert tracking.log_evaluation(tracked, "best", out_dirs, results) == new_id  # the same
    assert "copied_from" not in caplog.text

    def store_gone(*args, **kwargs):
        raise OSError("the tracking store cannot be reached")

    monkeypatch.setattr(tracking, "_log_evaluation", store_gone)
    assert tracking.log_evaluation(tracked, "best", out_dirs, results) is None
    assert "logging it to MLflow" in caplog.text and "cannot be reached" in caplog.text

    args = build_parser().parse_args(["evaluate", "--run", str(run.path), "--set", "track=false"])
    assert run_of_arguments(args).params.track is False  # an evaluation setting


def test_a_run_missing_its_fitted_files_says_so_when_it_predicts(project, tmp_path, caplog):
    from ham_utils.cli import main

    _, run = project
    copy = tmp_path / run.name
    shutil.copytree(run.path, copy)
    (copy / "evaluation" / "best" / "ood.npz").unlink()
    (copy / "evaluation" / "best" / "operating_points.json").unlink()
    image = next(run.params.resolved_data_dir.rglob("*.jpg"))
    assert main(["predict", "--run", str(copy), str(image)]) == 0
    assert "lacks operating_points.json, ood.npz" in caplog.text
    assert "without screening thresholds and the out-of-distribution check" in caplog.text
    assert f"evaluate --run {copy} --which best" in caplog.text
