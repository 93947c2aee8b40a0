"""Finding training runs and reading what they hold.

A run folder (``runs/<run_id>/``, written by :mod:`ham_utils.train`) has the resolved
``params.yaml``, ``classes.json``, the ``splits.csv`` it trained on and the models. Everything
downstream (evaluation, Grad-CAM, the app, ``predict``) reads runs through this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ham_utils.config import CLASSES, RUNS_ROOT, Params, load_params
from ham_utils.errors import DataError

MODEL_FILES = {"best": "best.keras", "last": "last.keras"}
EVALUATION_DIR = "evaluation"


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
        info = self.path / "splits.json"
        if info.is_file():
            return bool(json.loads(info.read_text()).get("synthetic", False))
        return self.params.uses_demo_data

    @property
    def evaluation_dir(self) -> Path:
        return self.path / EVALUATION_DIR

    def model_path(self, which: str = "best") -> Path:
        if which not in MODEL_FILES:
            raise ValueError(f"which must be one of {sorted(MODEL_FILES)}, got {which!r}")
        return self.path / MODEL_FILES[which]

    def load_model(self, which: str = "best") -> Any:
        from ham_utils.models import load_model

        return load_model(self.model_path(which))

    def splits(self) -> pd.DataFrame:
        from ham_utils.split import read_splits

        return read_splits(self.path / "splits.csv")

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "history.csv")


def is_finished(path: Path) -> bool:
    state = path / "state.json"
    return state.is_file() and bool(json.loads(state.read_text()).get("finished"))


def list_runs(runs_root: Path | None = None) -> list[Path]:
    """Finished runs, the most recently finished first."""
    root = runs_root or RUNS_ROOT
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and is_finished(p)]
    return sorted(runs, key=lambda p: (p / "state.json").stat().st_mtime, reverse=True)


def latest_run(runs_root: Path | None = None) -> Path | None:
    runs = list_runs(runs_root)
    return runs[0] if runs else None


def open_run(path: str | os.PathLike[str] | None = None) -> Run:
    """The run in ``path`` (default: the latest finished run), checked for completeness."""
    if path in (None, ""):
        found = latest_run()
        if found is None:
            raise DataError(
                f"no finished run in {RUNS_ROOT}; train one with `make train` or "
                "`python -m ham_utils train --params params/smoke.yaml`"
            )
        path = found
    run_dir = Path(path).expanduser().resolve()
    if not (run_dir / "params.yaml").is_file():
        raise DataError(f"{run_dir} is not a run folder (no params.yaml); see {RUNS_ROOT}")
    if not is_finished(run_dir):
        raise DataError(
            f"run {run_dir} has not finished training; start the same train command again "
            "to resume it"
        )
    values = yaml.safe_load((run_dir / "params.yaml").read_text())
    params = load_params(None, values)
    classes_file = run_dir / "classes.json"
    classes = tuple(json.loads(classes_file.read_text())) if classes_file.is_file() else CLASSES
    return Run(run_dir, params, classes)
