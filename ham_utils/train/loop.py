"""The two-phase training recipe and its run directory.

Phase 1 trains the head on a frozen backbone; phase 2 unfreezes the top blocks (BatchNorm
stays frozen) and fine-tunes with AdamW and a lower, cosine-decayed learning rate. The best
epoch by a balanced validation metric is kept as ``best.keras``.

A run lives in ``runs/<run_id>/``; the id is the run name plus a hash of the parameters, so
the same command finds the same folder. After every epoch the full model (with optimizer
state) and ``state.json`` are saved; a killed run started again continues from the last
finished epoch of the right phase, with the same early-stopping and best-score state.
(``keras.callbacks.BackupAndRestore`` restores weights and the epoch only, not the optimizer
nor other callbacks' state, hence :class:`RunCheckpoint`.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import yaml

from ham_utils import config
from ham_utils.config import CLASSES, Params
from ham_utils.runs import (
    CHECKPOINTS_DIR,
    CLASSES_FILE,
    CURVES_FILE,
    ENVIRONMENT_FILE,
    HISTORY_FILE,
    MODEL_FILES,
    PARAMS_FILE,
    SPLIT_INFO_FILE,
    SPLITS_FILE,
    TIMING_FILE,
    RunState,
    run_id,
    stored_settings,
    write_atomic,
)

log = logging.getLogger("ham_utils")

SCRATCH_BN_MOMENTUM = 0.9


def phase_of(epoch: int, params: Params) -> int:
    return 1 if epoch < params.warmup_epochs else 2


class RunCheckpoint(keras.callbacks.Callback):
    """After each epoch: history row, best model, early stopping, full checkpoint, state.

    One callback owns all of it so that the saved state is always consistent: the checkpoint
    is written before the state that names it, each by an atomic rename.
    """

    def __init__(self, run_dir: Path, state: RunState, params: Params, images_per_epoch: int):
        super().__init__()
        self.run_dir, self.state, self.recipe = run_dir, state, params
        self.images_per_epoch = images_per_epoch
        self.started = 0.0
        self.learning_rate = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.learning_rate = current_learning_rate(self.model)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        seconds = time.perf_counter() - self.started
        phase = phase_of(epoch, self.recipe)
        row = {
            "epoch": epoch,
            "phase": phase,
            "learning_rate": self.learning_rate,  # at the start of the epoch
            "seconds": round(seconds, 2),
            "images_per_second": round(self.images_per_epoch / seconds, 2),
            **{k: float(v) for k, v in logs.items() if k != "learning_rate"},
        }
        self._append_history(row)

        state = self.state
        score = logs.get(self.recipe.monitor)
        if score is None:
            raise KeyError(
                f"monitor {self.recipe.monitor!r} not in the epoch's logs {sorted(logs)}"
            )
        if score > state.best_score:
            state.best_score, state.best_epoch, state.wait = float(score), epoch, 0
            self._save_model(self.run_dir / MODEL_FILES["best"])
        elif phase == 2:
            state.wait += 1
            if state.wait >= self.recipe.patience:
                state.stopped_early = True
                self.model.stop_training = True

        checkpoints = self.run_dir / CHECKPOINTS_DIR
        checkpoints.mkdir(exist_ok=True)
        name = f"epoch-{epoch + 1:03d}.keras"
        self._save_model(checkpoints / name)
        previous = state.checkpoint
        state.epochs_done, state.checkpoint = epoch + 1, name
        state.seconds[f"phase{phase}"] = state.seconds.get(f"phase{phase}", 0.0) + seconds
        state.images[f"phase{phase}"] = state.images.get(f"phase{phase}", 0) + self.images_per_epoch
        state.save(self.run_dir)
        if previous and previous != name:
            (checkpoints / previous).unlink(missing_ok=True)

    def _append_history(self, row: dict[str, Any]) -> None:
        path = self.run_dir / HISTORY_FILE
        history = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        history = history[history["epoch"] < row["epoch"]] if len(history) else history
        history = pd.concat([history, pd.DataFrame([row])], ignore_index=True)
        write_atomic(path, history.to_csv(index=False))

    def _save_model(self, path: Path) -> None:
        tmp = path.with_name(path.stem + ".tmp.keras")
        self.model.save(tmp)
        tmp.replace(path)


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now (the schedule's value at the current step)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# --- runtime -------------------------------------------------------------------------------


def accelerator() -> str:
    """``gpu``, ``tpu`` or ``cpu``: what the current Keras backend will compute on."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("TPU"):
            return "tpu"
        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "jax":
        import jax

        return jax.default_backend()
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def precision_policy(setting: str, device: str) -> str:
    """The Keras dtype policy for a ``mixed_precision`` setting (``auto``: mixed on a GPU
    or TPU, bfloat16 where the hardware has it, else float16; float32 on a CPU)."""
    if setting == "off" or (setting == "auto" and device == "cpu"):
        return "float32"
    if setting != "auto":
        return setting
    if device == "gpu" and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        major = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0,))[
            0
        ]
        return "mixed_bfloat16" if major >= 8 else "mixed_float16"
    return "mixed_bfloat16"


def use_jit(setting: str, device: str) -> bool:
    """XLA compilation for a ``jit_compile`` setting. ``auto``: on with a GPU or TPU; off on
    a CPU with TensorFlow, where compiling a whole EfficientNet's backward pass takes minutes
    and gains little; always on with JAX, whose un-jitted (eager) steps are far slower."""
    if keras.backend.backend() == "jax":
        return setting != "false"
    if setting == "auto":
        return device != "cpu"
    return setting == "true"


def distribution_strategy() -> Any:
    """A ``tf.distribute`` strategy for the devices present (TPU, several GPUs or CPUs, one
    device); ``None`` outside TensorFlow, where Keras runs on the default device."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        pass
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:  # logical CPU devices, as in the multi-device test
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.get_strategy()


# --- the recipe ----------------------------------------------------------------------------


def _optimizer(params: Params, phase: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    if phase == 1:
        return keras.optimizers.AdamW(params.warmup_lr, weight_decay=params.weight_decay)
    learning_rate: Any = params.finetune_lr
    if params.lr_schedule == "cosine":
        steps = max(1, params.finetune_epochs * steps_per_epoch)
        warmup = int(params.lr_warmup_fraction * steps)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=params.finetune_lr / 10 if warmup else params.finetune_lr,
            decay_steps=max(1, steps - warmup),
            alpha=0.01,
            warmup_target=params.finetune_lr if warmup else None,
            warmup_steps=warmup,
        )
    return keras.optimizers.AdamW(learning_rate, weight_decay=params.weight_decay)


def _compile(
    model: keras.Model, params: Params, phase: int, steps: int, counts: np.ndarray
) -> None:
    from ham_utils.model.losses import focal_alpha, make_loss
    from ham_utils.model.metrics import training_metrics

    alpha_setting = params.focal_alpha_values()
    alpha = None if alpha_setting is None else focal_alpha(counts, alpha_setting)
    loss = make_loss(params.loss, params.focal_gamma, alpha, params.label_smoothing)
    jit = use_jit(params.jit_compile, accelerator())
    model.compile(
        optimizer=_optimizer(params, phase, steps),
        loss=loss,
        metrics=training_metrics(),
        jit_compile=jit,
    )
    # Keras creates the optimizer's slots inside the first trace of the train step otherwise,
    # and TensorFlow then traces the step again: this halves the start-up of every phase.
    model.optimizer.build(model.trainable_variables)


def _plateau_callback(params: Params, phase: int) -> list[keras.callbacks.Callback]:
    """ReduceLROnPlateau for ``lr_schedule: plateau`` in phase 2. It runs before the
    checkpoint, so a reduced rate is saved with the optimizer; its patience counter is not,
    and starts again from zero when a killed run resumes."""
    if phase != 2 or params.lr_schedule != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor=params.monitor,
            mode="max",
            factor=0.5,
            patience=max(1, params.patience // 2),
            min_lr=params.finetune_lr / 100,
        )
    ]


def _set_trainable(model: keras.Model, params: Params, phase: int) -> None:
    from ham_utils.model.build import backbone_blocks, freeze_backbone, unfreeze_backbone

    if phase == 1:
        freeze_backbone(model)
        return
    top = "all" if params.unfreeze == "all" else int(params.unfreeze)
    unfrozen = unfreeze_backbone(model, top)
    log.info("phase 2 unfreezes blocks: %s", ", ".join(unfrozen))
    if params.weights == "none":
        # BatchNorm stays frozen to protect pretrained statistics; a randomly initialised
        # network has none, and frozen BN at its initial values stops it from learning.
        # Its moving averages must also converge within a short run (momentum 0.99 needs
        # several hundred steps before validation in inference mode means anything).
        for name, layers in backbone_blocks(model):
            if name in unfrozen:
                for layer in layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.trainable = True
                        layer.momentum = SCRATCH_BN_MOMENTUM


def _streams(params: Params, train_split: Any, val_split: Any, counts: np.ndarray):
    from ham_utils.model.losses import class_weights
    from ham_utils.train.augment import MixUpCutMix, augmenter_from_params
    from ham_utils.train.pipeline import EvaluationStream, TrainingStream

    augment = None
    if params.augment:
        augmenter = augmenter_from_params(params)
        augment = lambda x: augmenter(x, training=True)  # noqa: E731
    mix = None
    if params.mixup_prob or params.cutmix_prob:
        mix = MixUpCutMix(
            params.mixup_prob,
            params.mixup_alpha,
            params.cutmix_prob,
            params.cutmix_alpha,
            params.seed,
        )
    weights = None
    if params.class_weight_power:
        cap = params.class_weight_cap or None
        weights = class_weights(counts, params.class_weight_power, cap)
    train_stream = TrainingStream(
        train_split.images,
        train_split.labels,
        params.batch_size,
        params.seed,
        oversampling=params.oversampling,
        augment=augment,
        mix=mix,
        class_weights=weights,
        workers=params.workers,
    )
    val_stream = EvaluationStream(val_split.images, val_split.labels, params.batch_size)
    return train_stream, val_stream, weights


def training_splits(params: Params, progress: bool = True) -> tuple[Any, Any, np.ndarray]:
    """The cached train and val splits (split first if needed) and the train class counts."""
    from ham_utils.data.prepare import cached_split, prepare_splits, require_every_class_in_train

    if not params.splits_csv.is_file():
        prepare_splits(params, progress=progress)
    require_every_class_in_train(params)
    train_split = cached_split(params, "train", progress=progress)
    val_split = cached_split(params, "val", progress=progress)
    return train_split, val_split, np.bincount(train_split.labels, minlength=len(CLASSES))


def training_input_of(stream: Any, loader: str) -> tuple[Any, list[keras.callbacks.Callback]]:
    """What ``fit`` iterates, and the callbacks it needs: a ``tf.data`` pipeline on the
    TensorFlow backend (graph-mode augmentation outside the GIL), else the PyDataset itself."""
    from ham_utils.config import ParamsError
    from ham_utils.train.pipeline import EpochOrder, tf_dataset

    tensorflow = keras.backend.backend() == "tensorflow"
    if loader == "tf_data" and not tensorflow:
        raise ParamsError("loader: tf_data needs the TensorFlow backend; use py_dataset or auto")
    if loader == "tf_data" or (loader == "auto" and tensorflow):
        return tf_dataset(stream), [EpochOrder(stream)]
    return stream, []


def _write_run_files(
    run_dir: Path, params: Params, weights: np.ndarray | None, policy: str
) -> None:
    (run_dir / PARAMS_FILE).write_text(yaml.safe_dump(stored_settings(params), sort_keys=False))
    (run_dir / CLASSES_FILE).write_text(json.dumps(list(CLASSES)) + "\n")
    shutil.copyfile(params.splits_csv, run_dir / SPLITS_FILE)
    split_info = params.splits_csv.with_suffix(".json")
    if split_info.is_file():
        shutil.copyfile(split_info, run_dir / SPLIT_INFO_FILE)
    environment = {
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "device": accelerator(),
        "precision_policy": policy,
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
    }
    (run_dir / ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2) + "\n")


def train(
    params: Params,
    runs_root: Path | None = None,
    progress: bool = True,
    tags: dict[str, str] | None = None,
) -> Path:
    """Train (or resume, or find finished) the run of these parameters; return its folder.

    ``tags`` go on its MLflow run when one is started (e.g. the sweep it belongs to)."""
    run_dir = (runs_root or config.runs_root()) / run_id(params)
    _check_same_split(run_dir, params)
    state = RunState.load(run_dir)
    if state.finished:
        log.info("run %s is already complete", run_dir)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(run_dir):
        return _train(params, run_dir, RunState.load(run_dir), progress, tags)


def _check_same_split(run_dir: Path, params: Params) -> None:
    """The run id keeps only the data folder's name (runs move between machines), so a run
    folder found again must have been trained on the split these parameters make now."""
    from ham_utils.data.split import read_splits
    from ham_utils.errors import DataError

    stored = run_dir / SPLITS_FILE
    if not (stored.is_file() and params.splits_csv.is_file()):
        return
    columns = ["image_id", "dx", "split"]
    ours = read_splits(stored)[columns].sort_values("image_id", ignore_index=True)
    now = read_splits(params.splits_csv)[columns].sort_values("image_id", ignore_index=True)
    if not ours.equals(now):
        raise DataError(
            f"{run_dir} was trained on another split than {params.splits_csv} (different images "
            "or assignments under a data folder of the same name); set run_name to train a "
            "new run, or point data_dir at the data this run was trained on"
        )


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Any:
    """Hold a lock on the run folder: a second process training the same run would
    overwrite its checkpoints."""
    import fcntl

    from ham_utils.errors import DataError

    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"another process is training {run_dir}; wait for it to finish (or stop it)"
            ) from None
        yield


def _train(
    params: Params, run_dir: Path, state: RunState, progress: bool, tags: dict[str, str] | None
) -> Path:
    from ham_utils.model.build import build_model, load_model
    from ham_utils.train.tracking import Tracker

    keras.utils.set_random_seed(params.seed)
    device = accelerator()
    policy = precision_policy(params.mixed_precision, device)
    keras.mixed_precision.set_global_policy(policy)

    train_split, val_split, counts = training_splits(params, progress)
    train_stream, val_stream, weights = _streams(params, train_split, val_split, counts)
    if not (run_dir / PARAMS_FILE).is_file():
        _write_run_files(run_dir, params, weights, policy)
    steps = len(train_stream)
    images_per_epoch = steps * params.batch_size
    training_input, input_callbacks = training_input_of(train_stream, params.loader)

    strategy = distribution_strategy()
    tracker = Tracker(params, run_dir, state, tags)
    phases = (
        (1, 0, params.warmup_epochs),
        (2, params.warmup_epochs, params.warmup_epochs + params.finetune_epochs),
    )
    model = None
    with tracker:
        for phase, first, last in phases:
            if state.epochs_done >= last or state.stopped_early:
                continue
            with strategy.scope() if strategy else contextlib.nullcontext():
                if state.epochs_done > first:  # resume inside this phase: optimizer state too
                    model = load_model(run_dir / CHECKPOINTS_DIR / state.checkpoint, compile=True)
                    log.info("resuming phase %d after epoch %d", phase, state.epochs_done)
                else:
                    if model is None:
                        model = (
                            load_model(run_dir / CHECKPOINTS_DIR / state.checkpoint)
                            if state.checkpoint
                            else build_model(
                                params.backbone,
                                params.image_size,
                                params.weights,
                                params.head,
                                params.dropout,
                            )
                        )
                    _set_trainable(model, params, phase)
                    _compile(model, params, phase, steps, counts)
            train_stream.set_epoch(state.epochs_done)
            model.fit(
                training_input,
                validation_data=val_stream,
                # Keras shuffles the batches of a PyDataset; a tf.data pipeline is ordered
                # by EpochOrder, and shuffle=True would only warn that it is ignored.
                shuffle=training_input is train_stream,
                initial_epoch=state.epochs_done,
                epochs=last,
                callbacks=[
                    *input_callbacks,
                    *_plateau_callback(params, phase),
                    # Log to MLflow before the checkpoint marks the epoch done: a run killed
                    # in between redoes (and re-logs) the epoch instead of losing its metrics.
                    tracker.callback(),
                    RunCheckpoint(run_dir, state, params, images_per_epoch),
                ],
                verbose=_keras_verbosity(progress),
            )
        _finish(run_dir, state)
        tracker.log_artifacts(run_dir)
    return run_dir


def _keras_verbosity(progress: bool) -> int:
    """A live progress bar in a terminal; one line per epoch elsewhere (a notebook, a log
    file), where a bar would become one output line per step."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _finish(run_dir: Path, state: RunState) -> None:
    """Keep the last epoch's model as last.keras, write timing.json, mark the run finished."""
    checkpoints = run_dir / CHECKPOINTS_DIR
    if state.checkpoint:
        shutil.copyfile(checkpoints / state.checkpoint, run_dir / MODEL_FILES["last"])
    timing = {
        phase: {
            "seconds": round(seconds, 1),
            "images": state.images[phase],
            "images_per_second": round(state.images[phase] / seconds, 2) if seconds else None,
        }
        for phase, seconds in state.seconds.items()
    }
    (run_dir / TIMING_FILE).write_text(json.dumps(timing, indent=2) + "\n")
    from ham_utils.figures.training import plot_training_curves

    plot_training_curves(pd.read_csv(run_dir / HISTORY_FILE), run_dir / CURVES_FILE)
    state.finished = True
    state.save(run_dir)
    shutil.rmtree(checkpoints, ignore_errors=True)
