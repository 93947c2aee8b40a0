"""Training runs end to end on tiny synthetic data; in subprocesses where a process is
killed, holds a lock or needs another backend."""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, project_env, run_cli, run_cli_process, run_python, run_until_killed

from ham_utils.config import load_params
from ham_utils.train.loop import run_id

# Tiny but real: 200 synthetic images, 32 px, the demo's EfficientNet-Lite0 from random weights
# (its ImageNet weights would only add loading time to what these tests check).
TINY = {
    "weights": "none",
    "demo_images": 200,
    "demo_width": 96,
    "demo_height": 72,
    "image_size": 32,
    "batch_size": 8,
    "warmup_epochs": 1,
    "finetune_epochs": 2,
    "finetune_lr": 0.001,
    "workers": 1,
    "jit_compile": "false",
    "track": "false",
    "patience": 99,
    # Phase 2 fine-tunes the top block only: tracing the whole network's backward pass costs
    # tens of seconds per process here, and resuming is the same code for any trainable set
    # (tests/test_recipes.py fine-tunes every block).
    "unfreeze": 1,
}


def tiny_args(**changes) -> list[str]:
    settings = {**TINY, **changes}
    return [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]


def run_dirs(root):
    return sorted((root / "runs").iterdir())


def test_run_id_follows_the_parameters():
    base = load_params(None, {"run_name": "x"})
    assert run_id(base) == run_id(load_params(None, {"run_name": "x", "workers": 7}))
    assert run_id(base) != run_id(load_params(None, {"run_name": "x", "seed": 1}))
    assert run_id(base).startswith("x-")


def test_plateau_schedule_adds_reduce_lr_on_plateau_in_phase_two_only():
    from ham_utils.train.loop import _plateau_callback

    plateau = load_params(None, {"lr_schedule": "plateau", "patience": 6})
    (callback,) = _plateau_callback(plateau, phase=2)
    assert callback.monitor == "val_balanced_accuracy" and callback.patience == 3
    assert _plateau_callback(plateau, phase=1) == []
    assert _plateau_callback(load_params(None, {}), phase=2) == []


def test_each_phase_traces_its_train_step_once():
    """Variables made inside the first trace of the train step (the optimizer's slots, macro
    F1's counts) make TensorFlow trace the whole step again: tens of seconds per phase."""
    import keras
    import numpy as np

    from ham_utils.train.loop import _compile

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(inputs))
    _compile(model, load_params(None, {}), phase=1, steps=1, counts=np.ones(7))
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(data) or step(data)
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    model.fit(x, keras.utils.to_categorical(np.arange(8) % 7, 7), epochs=2, verbose=0)
    assert len(traces) == 1


def test_a_run_being_trained_by_another_process_is_refused(project_root):
    import fcntl

    args = ["train", *tiny_args(run_name="locked")]  # on top of the default params/smoke.yaml
    params = load_params(REPO / "params" / "smoke.yaml", {**TINY, "run_name": "locked"})
    run_dir = project_root / "runs" / run_id(params)
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = run_cli_process(project_root, *args)
    assert result.returncode == 2
    assert "another process is training" in result.stderr


# Prints the optimizer's step count after each epoch is saved; used for the run that is
# killed and resumed below.
COUNTING_STEPS = """
import sys
from ham_utils.cli import main
from ham_utils.train import loop

save = loop.RunCheckpoint.on_epoch_end

def on_epoch_end(self, epoch, logs=None):
    save(self, epoch, logs)
    iterations = int(self.model.optimizer.iterations)
    print("epoch", epoch, "iterations", iterations, file=sys.stderr, flush=True)

loop.RunCheckpoint.on_epoch_end = on_epoch_end
raise SystemExit(main(sys.argv[1:]))
"""
RESUMED = {"finetune_epochs": 3, "track": "true", "run_name": "resume", "lr_schedule": "cosine"}


@dataclass
class Resumed:
    """A tiny run killed after its first fine-tuning epoch (or later), then resumed."""

    root: Path
    args: list[str]
    killed: dict  # its state.json when it was killed
    history_before: pd.DataFrame
    steps: int  # optimizer steps in one fine-tuning epoch
    resumed: subprocess.CompletedProcess
    run_dir: Path


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Resumed:
    """One run serves the resume tests: killed from outside (SIGKILL) once its state says two
    epochs (the warm-up and one fine-tuning epoch) are done, then run again to the end."""
    root = tmp_path_factory.mktemp("project")
    args = ["train", *tiny_args(**RESUMED)]
    log = root / "killed.log"

    def after_one_finetuning_epoch(state: dict) -> bool:
        return state["epochs_done"] >= 2 and "epoch 1 iterations" in log.read_text()

    state_file = run_until_killed(
        ["-c", COUNTING_STEPS, *args],
        project_env(root),
        lambda: list((root / "runs").glob("*/state.json")),
        after_one_finetuning_epoch,
        stderr=log,
    )
    assert state_file is not None, "the run never finished two epochs: " + log.read_text()[-3000:]
    steps = int(log.read_text().split("epoch 1 iterations ")[1].split()[0])
    killed = json.loads(state_file.read_text())
    history_before = pd.read_csv(state_file.parent / "history.csv")
    second = run_cli(root, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    run_dir = root / second.stdout.strip().splitlines()[-1]
    assert run_dir == state_file.parent
    return Resumed(root, args, killed, history_before, steps, second, run_dir)


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped_and_tracks_one_mlflow_run(resumed):
    killed = resumed.killed
    assert not killed["finished"] and 2 <= killed["epochs_done"] < 4
    assert f"resuming phase 2 after epoch {killed['epochs_done']}" in resumed.resumed.stderr
    run_dir = resumed.run_dir

    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]  # as many as an uninterrupted run
    assert history["phase"].tolist() == [1, 2, 2, 2]
    done = killed["epochs_done"]
    pd.testing.assert_frame_equal(history.iloc[:done], resumed.history_before.iloc[:done])
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["epochs_done"] == 4
    files = ("best.keras", "last.keras", "params.yaml", "splits.csv", "timing.json")
    for name in (*files, "training_curves.png"):
        assert (run_dir / name).is_file(), name

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{resumed.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ham10000"])
    assert len(runs) == 1  # the resumed run continued the same MLflow run
    metric = mlflow.MlflowClient().get_metric_history(state["mlflow_run_id"], "val_loss")
    assert sorted({m.step for m in metric}) == [0, 1, 2, 3]

    again = run_cli(resumed.root, *resumed.args)  # a finished run is not trained again
    assert again.returncode == 0 and "already complete" in again.stderr


@pytest.mark.slow
def test_training_runs_on_two_devices_with_mirrored_strategy(project_root):
    script = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "two = [tf.config.LogicalDeviceConfiguration()] * 2\n"
        "tf.config.set_logical_device_configuration(cpu, two)\n"
        "from ham_utils.train.loop import distribution_strategy\n"
        "print('replicas', distribution_strategy().num_replicas_in_sync, file=sys.stderr)\n"
        "from ham_utils.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    env = project_env(project_root)
    # Phase 1 only: the head's gradients are all-reduced over the two replicas all the same,
    # and tracing the whole network's backward pass twice more would add a minute.
    args = ["train", *tiny_args(warmup_epochs=2, finetune_epochs=0, run_name="mirrored")]
    result = run_python("-c", script, *args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stderr
    (run_dir,) = run_dirs(project_root)
    assert len(pd.read_csv(run_dir / "history.csv")) == 2


@pytest.mark.slow
def test_training_runs_on_the_jax_backend(project_root, request):
    # Keras runs JAX eagerly (op by op, minutes) without jit; the persistent compilation
    # cache makes reruns of the test faster.
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache_dir = cache.mkdir("jax-compilation-cache") if cache else project_root / "jax-cache"
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "HAM_PROJECT_ROOT": str(project_root),
    }
    settings = {"warmup_epochs": 1, "finetune_epochs": 1, "jit_compile": "true"}
    mixing = {"mixup_prob": 0.5, "cutmix_prob": 0.5, "class_weight_power": 1.0}
    args = ["train", *tiny_args(**settings, **mixing, run_name="jax")]
    result = run_python("-m", "ham_utils", *args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(project_root)
    assert json.loads((run_dir / "environment.json").read_text())["backend"] == "jax"
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 2 and history["loss"].notna().all()


@pytest.mark.slow
def test_a_resumed_run_continues_the_optimizer_step_count_and_learning_rate(resumed):
    """The optimizer continues its step count (saved in last.keras), so the cosine schedule
    goes on instead of starting again."""
    import keras
    import numpy as np

    from ham_utils.model.build import load_model
    from ham_utils.train.loop import _optimizer

    steps = resumed.steps
    assert steps > 1
    optimizer = load_model(resumed.run_dir / "last.keras", compile=True).optimizer
    epochs = RESUMED["finetune_epochs"]
    assert int(optimizer.iterations) == epochs * steps  # a restarted count would be fewer

    params = load_params(REPO / "params" / "smoke.yaml", {**TINY, **RESUMED})
    fresh = _optimizer(params, 2, steps)
    expected = []  # the schedule's rate at the start of each epoch of an uninterrupted run
    for step in range(0, epochs * steps, steps):
        fresh.iterations.assign(step)
        expected.append(float(keras.ops.convert_to_numpy(fresh.learning_rate)))
    assert expected[0] != pytest.approx(expected[1])  # the schedule moves in one epoch
    history = pd.read_csv(resumed.run_dir / "history.csv")
    finetuning = history[history["phase"] == 2]
    np.testing.assert_allclose(finetuning["learning_rate"], expected, rtol=1e-5)
