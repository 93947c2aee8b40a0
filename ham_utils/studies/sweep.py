"""Train and evaluate every variant of a grid file: ``python -m ham_utils sweep``.

A grid file names a few variants of one parameter file, each a handful of overrides::

    common:                 # on top of --params, for every variant (--set overrides it)
      finetune_epochs: 5
    variants:
      cross_entropy: {loss: crossentropy}
      focal: {loss: focal}
      best_with_mixing:     # the best of these by validation score, plus its own overrides
        best_of: [cross_entropy, focal]
        mixup_prob: 0.2

Each variant is an ordinary run (``runs/<grid>-<variant>-<hash>/``), so the sweep resumes
for free: a finished and evaluated variant is skipped, an interrupted one resumes from its
last epoch, a failed one is reported and the others go on. ``sweeps/<grid>-<hash>/`` keeps
the sweep's progress (``sweep.json``) and each failure's traceback; MLflow shows the
variants under one parent run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ham_utils.config import (
    Params,
    ParamsError,
    load_params,
    runs_root,
    sweeps_root,
    yaml_problem,
)
from ham_utils.runs import RunState, evaluation_at, run_id, write_atomic

log = logging.getLogger("ham_utils")

SWEEP_FILE = "sweep.json"
BEST_OF = "best_of"
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]
    best_of: tuple[str, ...] = ()  # chosen by the best validation score among these


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    common: dict[str, Any]
    variants: tuple[Variant, ...]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file: names, keys and the order of ``best_of`` variants."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"grid file {path} not found; see params/grids/ for examples")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("variants"), dict):
        raise ParamsError(f"{path} must hold a mapping 'variants:' of name: overrides")
    unknown = sorted(set(loaded) - {"common", "variants"})
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {unknown}; use common and variants")
    variants: list[Variant] = []
    for name, body in loaded["variants"].items():
        body = dict(body or {})
        if not VARIANT_NAME.match(str(name)):
            raise ParamsError(
                f"{path}: variant name {name!r} must be lower-case letters, digits and _"
            )
        best_of = tuple(body.pop(BEST_OF, ()) or ())
        earlier = {v.name for v in variants}
        missing = [b for b in best_of if b not in earlier]
        if missing:
            raise ParamsError(
                f"{path}: {name}.best_of names {missing}, which are not variants listed before it"
            )
        variants.append(Variant(str(name), body, best_of))
    if not variants:
        raise ParamsError(f"{path} has no variants")
    return Grid(path.stem, path, dict(loaded.get("common") or {}), tuple(variants))


def variant_params(
    base: str | Path | None,
    grid: Grid,
    variant: Variant,
    overrides: dict[str, Any],
    chosen: Variant | None = None,
) -> Params:
    """The parameters of one variant: ``base``, then the grid's common settings, then the
    command line's overrides, then the variant's own (over those of ``chosen``, the variant a
    ``best_of`` picked). A command-line key that a variant sets is an error: the sweep would
    not be what the grid says."""
    own = {**(chosen.overrides if chosen else {}), **variant.overrides}
    clash = sorted(set(overrides) & set(own))
    if clash:
        raise ParamsError(
            f"--set {clash} clash with variant {variant.name!r} of {grid.path}, which sets them"
        )
    values = {**grid.common, **overrides, **own, "run_name": f"{grid.name}-{variant.name}"}
    params = load_params(base, values)
    params.extra["source"] = str(base) if base else None
    return params


def check_grid(base: str | Path | None, grid: Grid, overrides: dict[str, Any]) -> None:
    """Load every variant's parameters once, so a typo fails now and not hours later."""
    known = {v.name: v for v in grid.variants}
    trained: dict[str, str] = {}  # the hash of a variant's run id -> the variant
    monitors: dict[str, str] = {}  # variant -> the validation metric its best score is of
    for variant in grid.variants:
        chosen = known[variant.best_of[0]] if variant.best_of else None
        try:
            params = variant_params(base, grid, variant, overrides, chosen)
        except ParamsError as e:
            raise ParamsError(f"variant {variant.name!r} of {grid.path}: {e}") from None
        monitors[variant.name] = params.monitor
        compared = {name: monitors[name] for name in variant.best_of}
        if len(set(compared.values())) > 1:
            raise ParamsError(
                f"variant {variant.name!r} of {grid.path} picks the best of {compared}, whose "
                "best scores are of different validation metrics and cannot be compared; give "
                "them one monitor"
            )
        if variant.best_of and not variant.overrides:
            raise ParamsError(
                f"variant {variant.name!r} of {grid.path} adds nothing to the variant its "
                "best_of picks, so it would train that variant again; give it its own settings "
                "or remove it"
            )
        if variant.best_of:  # which variant it builds on is known only when it runs
            continue
        digest = run_id(params).rsplit("-", 1)[1]
        if digest in trained:
            raise ParamsError(
                f"variants {trained[digest]!r} and {variant.name!r} of {grid.path} train the "
                "same model (their settings are the same, or differ only in settings that do "
                "not change training, such as tta); remove one, or evaluate one run with "
                "`python -m ham_utils evaluate --set ...` for other evaluation settings"
            )
        trained[digest] = variant.name


def is_done(run_dir: Path) -> bool:
    """Trained to the end and its best model evaluated on the test split."""
    state = RunState.load(run_dir)
    return state.finished and evaluation_at(run_dir, "best").metrics_file().is_file()


def train_and_evaluate(params: Params, tags: dict[str, str]) -> Path:
    """One variant: train (or resume) the run, then evaluate its best model once."""
    import keras

    from ham_utils.evaluation.evaluate import evaluate_run
    from ham_utils.runs import open_run
    from ham_utils.train.loop import train

    run_dir = train(params, tags=tags)
    if not evaluation_at(run_dir, "best").metrics_file().is_file():
        # The external set is this machine's setting, not the run's: it comes from params.
        evaluate_run(open_run(run_dir), external=params.external_dir, which="best")
    keras.utils.clear_session(free_memory=True)
    return run_dir


def sweep_dir(base: str | Path | None, grid: Grid, overrides: dict[str, Any]) -> Path:
    """``sweeps/<grid>-<hash of the base parameters, overrides and grid>``."""
    key = json.dumps(
        {
            "base": load_params(base, overrides).as_dict(),
            "grid": {"common": grid.common, "variants": [v.__dict__ for v in grid.variants]},
        },
        sort_keys=True,
        default=str,
    )
    return sweeps_root() / f"{grid.name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


class Sweep:
    """The progress of one sweep, kept in ``sweep.json`` after every change."""

    def __init__(self, folder: Path, grid: Grid, base: str | Path | None) -> None:
        self.folder = folder
        self.file = folder / SWEEP_FILE
        stored = json.loads(self.file.read_text()) if self.file.is_file() else {}
        self.record: dict[str, Any] = {
            "grid": str(grid.path),
            "params": str(base) if base else None,
            "mlflow_parent_run_id": stored.get("mlflow_parent_run_id", ""),
            "variants": {
                v.name: stored.get("variants", {}).get(v.name, {"status": "pending"})
                for v in grid.variants
            },
        }

    def variant(self, name: str) -> dict[str, Any]:
        return self.record["variants"][name]

    def update(self, name: str, **fields: Any) -> None:
        self.variant(name).update(fields)
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file, json.dumps(self.record, indent=2) + "\n")


def _pick_best(variant: Variant, sweep: Sweep, grid: Grid) -> Variant:
    """The ``best_of`` candidate with the highest best validation score (the monitored
    metric); the test split plays no part in the choice."""
    by_name = {v.name: v for v in grid.variants}
    scores = {}
    for name in variant.best_of:
        entry = sweep.variant(name)
        if entry["status"] != "done":
            raise ParamsError(
                f"{variant.name} is the best of {list(variant.best_of)}, but {name} is "
                f"{entry['status']}; fix it and run the sweep again"
            )
        scores[name] = RunState.load(runs_root() / entry["run"]).best_score
    best = max(variant.best_of, key=lambda name: scores[name])  # ties: the first listed
    sweep.update(variant.name, chosen=best, validation_scores=scores)
    return by_name[best]


def run_sweep(
    base: str | Path | None,
    grid_path: str | Path,
    overrides: dict[str, Any] | None = None,
    run_variant: Callable[[Params, dict[str, str]], Path] = train_and_evaluate,
) -> Sweep:
    """Train and evaluate every variant of the grid in order; return the sweep's record.

    ``run_variant`` trains and evaluates one variant and returns its run folder."""
    from ham_utils.train import tracking

    overrides = overrides or {}
    grid = load_grid(grid_path)
    check_grid(base, grid, overrides)
    folder = sweep_dir(base, grid, overrides)
    sweep = Sweep(folder, grid, base)
    track = load_params(base, {**grid.common, **overrides}).track
    parent = ""
    if track:
        parent = tracking.start_parent_run(
            folder.name, sweep.record["mlflow_parent_run_id"], {"sweep_grid": str(grid.path)}
        )
        sweep.record["mlflow_parent_run_id"] = parent
    sweep.save()
    n = len(grid.variants)
    log.info("sweep %s: %d variant%s; progress in %s", grid.name, n, "s"[: n != 1], sweep.file)

    for number, variant in enumerate(grid.variants, 1):
        label = f"[{number}/{len(grid.variants)}] {variant.name}"
        start = time.perf_counter()
        try:
            chosen = _pick_best(variant, sweep, grid) if variant.best_of else None
            params = variant_params(base, grid, variant, overrides, chosen)
            run_dir = runs_root() / run_id(params)
            sweep.update(variant.name, run=run_dir.name)
            if is_done(run_dir):
                log.info("%s: done before, skipped (%s)", label, run_dir)
                sweep.update(variant.name, status="done", error="")
                continue
            log.info("%s: training and evaluating %s", label, run_dir)
            sweep.update(variant.name, status="running")
            tags = {"sweep": folder.name, "variant": variant.name}
            if parent:
                tags.update(tracking.parent_tags(parent))
            run_dir = run_variant(params, tags)
            if parent:
                tracking.tag_run(run_dir, tags)  # also for a run started before the sweep
        except Exception as e:  # a failed variant must not stop the others
            error_file = folder / f"{variant.name}.error.txt"
            error_file.write_text(traceback.format_exc())
            sweep.update(variant.name, status="failed", error=f"{type(e).__name__}: {e}")
            log.error("%s FAILED: %s: %s (traceback: %s)", label, type(e).__name__, e, error_file)
            continue
        seconds = round(time.perf_counter() - start, 1)
        sweep.update(variant.name, status="done", error="", seconds=seconds)
        log.info("%s: done in %.0f s", label, seconds)

    if parent:
        tracking.end_parent_run(parent, failed=bool(failed(sweep)))
    return sweep


def failed(sweep: Sweep) -> list[str]:
    return [n for n, v in sweep.record["variants"].items() if v["status"] != "done"]


def summary(sweep: Sweep) -> str:
    """One line per variant: status, run folder, best validation score, error."""
    lines = []
    for name, entry in sweep.record["variants"].items():
        run = entry.get("run", "")
        score = ""
        if entry["status"] == "done" and run:
            score = f"best validation score {RunState.load(runs_root() / run).best_score:.3f}"
        chosen = f"(best of: {entry['chosen']}) " if entry.get("chosen") else ""
        detail = entry.get("error") or score
        lines.append(f"{name:24s} {entry['status']:8s} {chosen}{run}  {detail}".rstrip())
    return "\n".join(lines)
