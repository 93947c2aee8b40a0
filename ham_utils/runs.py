"""The run folder: its id, its files, its state and the layout of its evaluations.

Everything that reads or writes a run goes through this module, so each file name is
spelled once::

    runs/<run_id>/
        params.yaml  classes.json  splits.csv  splits.json  environment.json
        state.json  history.csv  timing.json  training_curves.png
        best.keras  last.keras  checkpoints/          (checkpoints: while training)
        evaluation/<model>/                           (model: best or last)
            metrics.json  predictions.csv  calibration.json  operating_points.json
            ood.npz  MODEL_CARD.md  figures/  gradcam/
            external/  metrics.json  predictions.csv  figures/  dropped_rows.csv

``splits.csv`` holds image paths relative to the data folder, so a run trained on one
machine is evaluated on another by pointing ``data_dir`` at the same images there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ham_utils import config
from ham_utils.config import MACHINE_PATHS, MODELS, Params, load_params
from ham_utils.errors import DataError

PARAMS_FILE = "params.yaml"
CLASSES_FILE = "classes.json"
SPLITS_FILE = "splits.csv"
SPLIT_INFO_FILE = "splits.json"
ENVIRONMENT_FILE = "environment.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
TIMING_FILE = "timing.json"
CURVES_FILE = "training_curves.png"
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILES: dict[str, str] = {which: f"{which}.keras" for which in MODELS}

EVALUATION_DIR = "evaluation"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CALIBRATION_FILE = "calibration.json"
OPERATING_POINTS_FILE = "operating_points.json"
OOD_FILE = "ood.npz"
FIGURES_DIR = "figures"
GRADCAM_DIR = "gradcam"
DROPPED_ROWS_FILE = "dropped_rows.csv"
EXTERNAL_SET = "external"

# Settings that do not change what is trained: the same run folder serves them all.
NOT_IN_RUN_ID = (
    "run_name",
    "workers",
    "loader",
    "track",
    "tta",
    "temperature_scaling",
    "screening_sensitivity",
    "ood_flag_rate",
    "external_dir",
)

# What may change after training: how to evaluate, whether to track it, and where the data
# lies on this machine.
EVALUATION_SETTINGS = (
    "tta",
    "temperature_scaling",
    "screening_sensitivity",
    "ood_flag_rate",
    "batch_size",
    "track",
    *MACHINE_PATHS,
)
# Machine paths a run folder does not keep: the external test set is the evaluation's, on the
# machine that evaluates (data_dir stays, the default on the machine that trained the run).
NOT_KEPT_WITH_RUN = ("external_dir",)


def stored_settings(params: Params) -> dict[str, Any]:
    """The parameters as ``params.yaml`` keeps them: without :data:`NOT_KEPT_WITH_RUN`."""
    return {**params.as_dict(), **dict.fromkeys(NOT_KEPT_WITH_RUN, "")}


def portable_settings(params: Params) -> dict[str, Any]:
    """The parameters with each machine path cut to its last part: the same recipe on the
    same data, wherever the data lies (so a run finds its folder again after a move; train
    checks that the split is the same)."""
    settings = params.as_dict()
    for key in MACHINE_PATHS:
        settings[key] = Path(settings[key]).name if settings[key] else ""
    return settings


def run_id(params: Params) -> str:
    """``<run name>-<hash of the parameters>``: the same parameters give the same folder."""
    name = params.run_name or Path(params.extra.get("source") or "run").stem
    settings = {k: v for k, v in portable_settings(params).items() if k not in NOT_IN_RUN_ID}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` by a rename, so that a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dataclass
class RunState:
    """What a resumed run needs to continue exactly where it stopped."""

    epochs_done: int = 0  # over both phases
    best_score: float = -np.inf
    best_epoch: int = -1
    wait: int = 0  # epochs without improvement (phase 2 early stopping)
    stopped_early: bool = False
    finished: bool = False
    checkpoint: str = ""  # file name of the last epoch's full model, in checkpoints/
    mlflow_run_id: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2))


def _check_model(which: str) -> str:
    if which not in MODELS:
        raise ValueError(f"which must be one of {MODELS}, got {which!r}")
    return which


@dataclass(frozen=True)
class Evaluation:
    """The evaluation of one model of a run: ``evaluation/<model>/``."""

    root: Path
    model: str

    def set_dir(self, set_name: str = "test") -> Path:
        """The folder of one evaluated set: the test split at the root, others below it."""
        return self.root if set_name == "test" else self.root / set_name

    def metrics_file(self, set_name: str = "test") -> Path:
        return self.set_dir(set_name) / METRICS_FILE

    def predictions_file(self, set_name: str = "test") -> Path:
        return self.set_dir(set_name) / PREDICTIONS_FILE

    def figures_dir(self, set_name: str = "test") -> Path:
        return self.set_dir(set_name) / FIGURES_DIR

    @property
    def gradcam_dir(self) -> Path:
        return self.root / GRADCAM_DIR

    @property
    def calibration_file(self) -> Path:
        return self.root / CALIBRATION_FILE

    def metrics(self, set_name: str = "test") -> dict[str, Any] | None:
        """The metrics of one set, or None when it has not been evaluated."""
        path = self.metrics_file(set_name)
        return json.loads(path.read_text()) if path.is_file() else None

    def _write_fitted(self, path: Path, n_images: int, **fields: Any) -> None:
        """Write a record of what was fitted on the validation split for this model; the
        model's name in it is what :meth:`_for_views` checks."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"model": self.model, "fitted_on": "val", "n_images": n_images, **fields}
        write_atomic(path, json.dumps(record, indent=2) + "\n")

    def write_calibration(self, temperatures: dict[int, float], n_images: int) -> None:
        """Store the temperature fitted on the validation split for each TTA view count."""
        by_views = {str(v): t for v, t in sorted(temperatures.items())}
        self._write_fitted(self.calibration_file, n_images, temperature_by_views=by_views)

    @property
    def ood_file(self) -> Path:
        """The out-of-distribution detector fitted for this model
        (:mod:`ham_utils.evaluation.ood`)."""
        return self.root / OOD_FILE

    @property
    def operating_points_file(self) -> Path:
        return self.root / OPERATING_POINTS_FILE

    def write_operating_points(
        self,
        target_sensitivity: float,
        thresholds: dict[int, dict[str, float | None]],
        calibrated: bool,
        n_images: int,
    ) -> None:
        """Store the screening thresholds chosen on the validation split for each TTA view
        count, on the probabilities shown to a reader (calibrated when ``calibrated``)."""
        self._write_fitted(
            self.operating_points_file,
            n_images,
            target_sensitivity=target_sensitivity,
            calibrated=calibrated,
            thresholds_by_views={str(v): t for v, t in sorted(thresholds.items())},
        )

    def temperature(self, views: int) -> float | None:
        """The temperature for outputs averaged over ``views`` TTA views, or None when this
        model has no calibration. A temperature fitted for other outputs is refused."""
        fitted = self._for_views(self.calibration_file, "temperature_by_views", views)
        return None if fitted is None else float(fitted)

    def operating_points(self, views: int) -> dict[str, Any] | None:
        """The screening thresholds for ``views``-view outputs (``melanoma``, ``high_risk``,
        ``target_sensitivity``, ``calibrated``), or None when the model has none."""
        thresholds = self._for_views(self.operating_points_file, "thresholds_by_views", views)
        if thresholds is None:
            return None
        record = json.loads(self.operating_points_file.read_text())
        return {
            **thresholds,
            "target_sensitivity": record["target_sensitivity"],
            "calibrated": record["calibrated"],
        }

    def _for_views(self, path: Path, key: str, views: int) -> Any:
        """The entry for ``views`` of a file fitted on validation outputs; refused when it
        was fitted for another model or other outputs."""
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("model") != self.model:
            raise DataError(
                f"{path} was fitted for the {record.get('model')!r} model, not {self.model!r}; "
                f"run `python -m ham_utils evaluate --which {self.model}` again"
            )
        fitted = record.get(key, {})
        if str(views) not in fitted:
            raise DataError(
                f"{path} holds values for {sorted(int(v) for v in fitted)}-view outputs, "
                f"not the {views}-view outputs used here; run `python -m ham_utils evaluate "
                f"--which {self.model}` again"
            )
        return fitted[str(views)]


def staging_dir(target: Path) -> Path:
    """Where a new version of the folder ``target`` is written before
    :func:`replace_folder` swaps it in (beside it, hidden, so that the swap is a rename)."""
    return target.with_name(f".{target.name}.new")


def _previous_dir(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def restore_interrupted(target: Path) -> None:
    """Put back the previous ``target`` folder if a swap was cut off between its two renames."""
    previous = _previous_dir(target)
    if previous.is_dir() and not target.exists():
        os.replace(previous, target)


def replace_folder(new: Path, target: Path, keep: tuple[str, ...] = ()) -> None:
    """Put the folder ``new`` in the place of ``target`` by renames, so that a reader finds the
    whole old folder or the whole new one. Entries of the old folder named in ``keep`` (what
    ``new`` does not replace) move over into the new one."""
    previous = _previous_dir(target)
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        os.replace(target, previous)
    os.replace(new, target)
    for name in keep:
        if (previous / name).exists() and not (target / name).exists():
            os.replace(previous / name, target / name)
    shutil.rmtree(previous, ignore_errors=True)


def evaluation_at(run_dir: Path, which: str = "best") -> Evaluation:
    """The evaluation folder of one model of the run in ``run_dir``."""
    return Evaluation(run_dir / EVALUATION_DIR / _check_model(which), which)


@dataclass(frozen=True)
class Run:
    """One finished training run."""

    path: Path
    params: Params
    classes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def synthetic(self) -> bool:
        """Trained on the synthetic demo dataset (its results mean nothing medically)."""
        info = self.path / SPLIT_INFO_FILE
        if info.is_file():
            return bool(json.loads(info.read_text()).get("synthetic", False))
        return self.params.uses_demo_data

    def with_settings(self, **values: Any) -> Run:
        """This run with evaluation-time settings changed, e.g. ``data_dir`` on a new machine."""
        return dataclasses.replace(
            self, params=dataclasses.replace(self.params, **values).validate()
        )

    def evaluation(self, which: str = "best") -> Evaluation:
        return evaluation_at(self.path, which)

    def model_path(self, which: str = "best") -> Path:
        return self.path / MODEL_FILES[_check_model(which)]

    def load_model(self, which: str = "best") -> Any:
        from ham_utils.model.build import load_model

        return load_model(self.model_path(which))

    def splits(self) -> pd.DataFrame:
        """The run's split, image paths resolved against the ``data_dir`` of its parameters."""
        from ham_utils.data.split import read_splits

        return read_splits(self.path / SPLITS_FILE, self.params.resolved_data_dir)

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.path / HISTORY_FILE)

    def state(self) -> RunState:
        return RunState.load(self.path)


def is_finished(path: Path) -> bool:
    return RunState.load(path).finished if (path / STATE_FILE).is_file() else False


def list_runs(runs_root: Path | None = None) -> list[Path]:
    """Finished runs, the most recently finished first."""
    root = runs_root or config.runs_root()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and is_finished(p)]
    return sorted(runs, key=lambda p: (p / STATE_FILE).stat().st_mtime, reverse=True)


def latest_run(runs_root: Path | None = None) -> Path | None:
    runs = list_runs(runs_root)
    return runs[0] if runs else None


def open_run(path: str | os.PathLike[str] | None = None) -> Run:
    """The run in ``path`` (default: the latest finished run), checked for completeness."""
    if path in (None, ""):
        found = latest_run()
        if found is None:
            raise DataError(
                f"no finished run in {config.runs_root()}; train one with `make train` or "
                "`python -m ham_utils train --params params/smoke.yaml`"
            )
        path = found
    run_dir = Path(path).expanduser().resolve()
    if not (run_dir / PARAMS_FILE).is_file():
        raise DataError(
            f"{run_dir} is not a run folder (no {PARAMS_FILE}); see {config.runs_root()}"
        )
    if not is_finished(run_dir):
        raise DataError(
            f"run {run_dir} has not finished training; start the same train command again "
            "to resume it"
        )
    classes_file = run_dir / CLASSES_FILE
    if not classes_file.is_file():
        raise DataError(
            f"{classes_file} is missing: without it the model's outputs cannot be named; "
            "copy the whole run folder again"
        )
    stored = yaml.safe_load((run_dir / PARAMS_FILE).read_text())
    # What an older run folder kept of another machine's paths is not used here.
    params = load_params(None, {**stored, **dict.fromkeys(NOT_KEPT_WITH_RUN, "")})
    return Run(run_dir, params, tuple(json.loads(classes_file.read_text())))
