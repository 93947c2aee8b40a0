"""Sweeps over a grid file: order, skipping what is done, failures, resuming after a kill."""

import json

import pytest
from conftest import REPO, project_env, run_cli, run_until_killed

from ham_utils.config import ParamsError
from ham_utils.runs import run_id
from ham_utils.studies import sweep as sweep_module
from ham_utils.studies.sweep import load_grid, run_sweep

GRID = """
common:
  image_size: 48
variants:
  plain:
    loss: crossentropy
  broken:
    loss: focal
  weighted:
    class_weight_power: 1.0
  best_mixed:
    best_of: [plain, weighted]
    mixup_prob: 0.2
"""


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Runs and sweeps under ``tmp_path``."""
    monkeypatch.setenv("HAM_PROJECT_ROOT", str(tmp_path))
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    return tmp_path, grid


def fake_training(runs_root, scores, calls):
    """Stands in for training and evaluation: writes what a finished, evaluated run has.
    The variant named ``broken`` raises, as a run running out of memory would."""

    def run_variant(params, tags):
        calls.append((tags["variant"], params))
        if tags["variant"] == "broken":
            raise RuntimeError("out of memory")
        run_dir = runs_root / run_id(params)
        (run_dir / "evaluation" / "best").mkdir(parents=True)
        state = {"finished": True, "best_score": scores[tags["variant"]]}
        (run_dir / "state.json").write_text(json.dumps(state))
        (run_dir / "evaluation" / "best" / "metrics.json").write_text("{}")
        return run_dir

    return run_variant


def test_a_failed_variant_is_reported_the_others_go_on_and_a_rerun_skips_what_is_done(folders):
    root, grid = folders
    scores = {"plain": 0.61, "weighted": 0.67, "best_mixed": 0.7}
    calls = []
    runner = fake_training(root / "runs", scores, calls)
    sweep = run_sweep(None, grid, {"track": "false"}, run_variant=runner)

    status = {name: v["status"] for name, v in sweep.record["variants"].items()}
    assert status == {"plain": "done", "broken": "failed", "weighted": "done", "best_mixed": "done"}
    assert "out of memory" in sweep.record["variants"]["broken"]["error"]
    assert "RuntimeError" in (sweep.folder / "broken.error.txt").read_text()
    # The variants got the grid's settings, and each its own run name.
    by_name = dict(calls)
    assert by_name["plain"].loss == "crossentropy" and by_name["plain"].image_size == 48
    assert by_name["weighted"].class_weight_power == 1.0
    # best_of took the higher validation score (weighted), then added its own overrides.
    best = by_name["best_mixed"]
    assert sweep.record["variants"]["best_mixed"]["chosen"] == "weighted"
    assert best.class_weight_power == 1.0 and best.mixup_prob == 0.2
    assert best.run_name == "grid-best_mixed"
    assert json.loads(sweep.file.read_text()) == sweep.record

    calls.clear()
    again = run_sweep(None, grid, {"track": "false"}, run_variant=runner)
    assert [name for name, _ in calls] == ["broken"]  # only the failed one is tried again
    assert again.record["variants"]["broken"]["status"] == "failed"


def test_a_grid_is_checked_before_anything_runs(folders, tmp_path):
    root, grid = folders
    calls = []
    runner = fake_training(root / "runs", {}, calls)
    typo = tmp_path / "typo.yaml"
    typo.write_text("variants:\n  a: {loss: focal}\n  b: {focal_gama: 3}\n")
    with pytest.raises(ParamsError, match=r"variant 'b'.*focal_gama"):
        run_sweep(None, typo, {}, run_variant=runner)
    with pytest.raises(ParamsError, match="clash with variant 'plain'"):
        run_sweep(None, grid, {"loss": "focal"}, run_variant=runner)
    order = tmp_path / "order.yaml"
    order.write_text("variants:\n  best: {best_of: [a]}\n  a: {loss: focal}\n")
    with pytest.raises(ParamsError, match="not variants listed before it"):
        load_grid(order)
    assert calls == []


def test_two_variants_that_train_the_same_model_are_refused(folders, tmp_path):
    root, _ = folders
    calls = []
    runner = fake_training(root / "runs", {}, calls)
    twins = tmp_path / "twins.yaml"
    twins.write_text("common: {loss: focal}\nvariants:\n  a: {}\n  b: {loss: focal}\n")
    with pytest.raises(ParamsError, match=r"variants 'a' and 'b' of .* train the same model"):
        run_sweep(None, twins, {"track": "false"}, run_variant=runner)
    evaluation_only = tmp_path / "tta.yaml"
    evaluation_only.write_text("variants:\n  a: {tta: 1}\n  b: {tta: 4}\n")
    with pytest.raises(ParamsError, match="train the same model"):
        run_sweep(None, evaluation_only, {"track": "false"}, run_variant=runner)
    empty_best = tmp_path / "best.yaml"
    empty_best.write_text("variants:\n  a: {loss: focal}\n  b: {best_of: [a]}\n")
    with pytest.raises(ParamsError, match=r"'b' .* adds nothing"):
        run_sweep(None, empty_best, {"track": "false"}, run_variant=runner)
    assert calls == []


def test_the_sweep_command_prints_only_its_summary_on_stdout(folders, monkeypatch, capsys):
    """Keras writes its epoch lines to stdout; the command sends them to stderr, so that what
    stdout carries is the summary and the sweep file."""
    from ham_utils.cli import main

    root, _ = folders
    grid = root / "one.yaml"
    grid.write_text("variants:\n  plain: {loss: crossentropy}\n")
    runner = fake_training(root / "runs", {"plain": 0.5}, [])

    def training_that_talks(params, tags):
        print("Epoch 1/1 - 3s - loss: 2.0940 - val_balanced_accuracy: 0.2857")
        return runner(params, tags)

    real = sweep_module.run_sweep
    monkeypatch.setattr(
        sweep_module,
        "run_sweep",
        lambda base, grid, overrides: real(base, grid, overrides, run_variant=training_that_talks),
    )
    assert main(["sweep", "--grid", str(grid), "--set", "track=false"]) == 0
    captured = capsys.readouterr()
    assert "Epoch 1/1" not in captured.out and "Epoch 1/1" in captured.err
    (summary_line, sweep_file) = captured.out.strip().splitlines()
    assert summary_line.startswith("plain") and "done" in summary_line
    assert sweep_file.endswith("sweep.json")


def test_best_of_refuses_candidates_scored_on_different_metrics(tmp_path):
    from ham_utils.studies.sweep import check_grid

    grid = tmp_path / "monitors.yaml"
    grid.write_text(
        "variants:\n"
        "  a: {loss: focal}\n"
        "  b: {loss: crossentropy, monitor: val_macro_f1}\n"
        "  best: {best_of: [a, b], mixup_prob: 0.2}\n"
    )
    with pytest.raises(ParamsError, match=r"'best'.*different validation metrics"):
        check_grid(None, load_grid(grid), {})
    grid.write_text(grid.read_text().replace("monitor: val_macro_f1", "patience: 3"))
    check_grid(None, load_grid(grid), {})  # one monitor: accepted


def test_the_shipped_grids_load_with_their_parameter_files():
    from ham_utils.studies.sweep import check_grid

    for grid, params in (("imbalance", "cpu"), ("demo", "smoke")):
        loaded = load_grid(REPO / "params" / "grids" / f"{grid}.yaml")
        check_grid(REPO / "params" / f"{params}.yaml", loaded, {})
    names = [v.name for v in load_grid(REPO / "params" / "grids" / "imbalance.yaml").variants]
    assert len(names) == 6 and names[-1] == "best_with_mixing"


@pytest.mark.slow
def test_a_killed_sweep_resumes_the_interrupted_variant_and_skips_the_finished(project_root):
    """The demo grid on the demo data, killed during its second variant, then run again."""
    args = ["-m", "ham_utils", "sweep", "--grid", "params/grids/demo.yaml"]
    killed_state = run_until_killed(
        args,
        project_env(project_root),
        lambda: list((project_root / "runs").glob("demo-focal_weights-*/state.json")),
        lambda state: state["epochs_done"] >= 1,
    )
    assert killed_state is not None, "the second variant never finished an epoch"
    assert not json.loads(killed_state.read_text())["finished"]

    second = run_cli(project_root, *args[2:])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[1/2] cross_entropy: done before, skipped" in second.stderr
    assert "resuming phase 1 after epoch 1" in second.stderr
    (sweep_file,) = (project_root / "sweeps").glob("demo-*/sweep.json")
    record = json.loads(sweep_file.read_text())
    assert {v["status"] for v in record["variants"].values()} == {"done"}
    for variant in record["variants"].values():
        run_dir = project_root / "runs" / variant["run"]
        assert (run_dir / "evaluation" / "best" / "metrics.json").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project_root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ham10000").experiment_id
    runs = {run.info.run_id: run for run in client.search_runs([experiment])}
    parent = record["mlflow_parent_run_id"]
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.data.tags["variant"] for r in children) == ["cross_entropy", "focal_weights"]
    assert runs[parent].info.status == "FINISHED"


def test_a_malformed_grid_or_parameter_file_is_an_error_naming_the_file(tmp_path):
    from ham_utils.config import load_params

    broken = tmp_path / "broken.yaml"
    broken.write_text("variants:\n  a: {loss: focal\n  b: {loss: crossentropy}\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml is not valid YAML: line \d+") as error:
        load_grid(broken)
    assert "<unicode string>" not in str(error.value)
    with pytest.raises(ParamsError, match=r"broken\.yaml is not valid YAML"):
        load_params(broken)
