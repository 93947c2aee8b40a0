"""MLflow experiment tracking into a local store in the project (no server needed).

Metadata go to ``mlflow.db`` (SQLite, MLflow's default backend since 3.7) and artifacts to
``mlruns/`` at the project root; ``MLFLOW_TRACKING_URI`` overrides the store. The parameter
``track: false`` turns all of it off. A resumed run continues the same MLflow run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import keras

from ham_utils import runs
from ham_utils.config import Params, project_root

log = logging.getLogger("ham_utils")

EXPERIMENT = "ham10000"
ARTIFACTS = (
    runs.PARAMS_FILE,
    runs.HISTORY_FILE,
    runs.CURVES_FILE,
    runs.TIMING_FILE,
    runs.ENVIRONMENT_FILE,
    runs.SPLIT_INFO_FILE,
)
EVALUATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc", "ece")

# MLflow announces creating and upgrading its SQLite store at INFO (alembic too, one line per
# migration), and draws a tqdm.auto bar per artifact upload. None of it is news in a report.
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _experiment_id() -> str:
    """The project's experiment in the store (created on first use)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(
        EXPERIMENT, artifact_location=(project_root() / "mlruns").as_uri()
    )


def parent_tags(parent_run_id: str) -> dict[str, str]:
    """Tags that show a run nested under ``parent_run_id`` in the MLflow UI."""
    return {"mlflow.parentRunId": parent_run_id}


def start_parent_run(name: str, run_id: str = "", tags: dict[str, str] | None = None) -> str:
    """Open (or reopen, given ``run_id``) a parent run that groups other runs, e.g. the
    variants of a sweep; it stays open, without being the active run, until
    :func:`end_parent_run`."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    return client.create_run(_experiment_id(), run_name=name, tags=tags or {}).info.run_id


def end_parent_run(run_id: str, failed: bool) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri()).set_terminated(run_id, "FAILED" if failed else "FINISHED")


def tag_run(run_dir: Path, tags: dict[str, str]) -> None:
    """Set tags on the MLflow run of a training run, if it has one (e.g. a run trained before
    a sweep took it in)."""
    from ham_utils.runs import RunState

    run_id = RunState.load(run_dir).mlflow_run_id
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


class Tracker:
    """Context manager around one MLflow run of a training run; a no-op when tracking is off."""

    def __init__(
        self, params: Params, run_dir: Path, state: Any, tags: dict[str, str] | None = None
    ) -> None:
        self.params, self.run_dir, self.state = params, run_dir, state
        self.tags = tags or {}
        self.enabled = params.track
        self.mlflow: Any = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(experiment_id=_experiment_id())
        run = mlflow.start_run(run_id=self.state.mlflow_run_id or None, run_name=self.run_dir.name)
        if not self.state.mlflow_run_id:
            # Kept at once, not at the end of the first epoch: a run killed before then
            # continues this MLflow run when it resumes, instead of opening a second one.
            self.state.mlflow_run_id = run.info.run_id
            self.state.save(self.run_dir)
            mlflow.log_params(self.params.as_dict())
            mlflow.set_tags(
                {
                    "run_dir": str(self.run_dir),
                    "synthetic_data": self.params.uses_demo_data,
                    **self.tags,
                }
            )
        log.info("MLflow run %s in %s", run.info.run_id, tracking_uri())
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run(status="FINISHED" if exc_type is None else "KILLED")

    def callback(self) -> keras.callbacks.Callback:
        """Logs every epoch's metrics (and learning rate) to the active run."""
        tracker = self

        class _LogEpoch(keras.callbacks.Callback):
            learning_rate = 0.0

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self.learning_rate = float(
                    keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
                )

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                if tracker.mlflow is None:
                    return
                metrics = {k: float(v) for k, v in (logs or {}).items()}
                metrics["learning_rate"] = self.learning_rate  # at the start of the epoch
                tracker.mlflow.log_metrics(metrics, step=epoch)

        return _LogEpoch()

    def log_artifacts(self, run_dir: Path) -> None:
        if self.mlflow is None:
            return
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.mlflow.log_artifact(str(run_dir / name))
        best = run_dir / runs.MODEL_FILES["best"]
        if best.is_file():
            self.mlflow.log_artifact(str(best), artifact_path="model")


def log_evaluation(
    run: runs.Run,
    which: str,
    out_dirs: dict[str, Path],
    results: dict[str, dict[str, Any]],
) -> str | None:
    """Add an evaluation's headline metrics (``<model>_<set>_<metric>``) and files to the MLflow
    run of the training run; return its id. A run whose MLflow run is not in this store (a run
    folder copied from another machine), or is another run folder's, gets a new MLflow run,
    tagged with the old id, and its ``state.json`` keeps the new id. Tracking never throws a
    finished evaluation away: a failure here is a warning, and None."""
    try:
        return _log_evaluation(run, which, out_dirs, results)
    except Exception as e:  # the store, a network share, a full disk: the evaluation stays
        log.warning(
            "the evaluation of %s is kept in %s, but logging it to MLflow (%s) failed: %s: %s",
            run.name,
            next(iter(out_dirs.values()), run.path),
            tracking_uri(),
            type(e).__name__,
            e,
        )
        return None


def _log_evaluation(
    run: runs.Run, which: str, out_dirs: dict[str, Path], results: dict[str, dict[str, Any]]
) -> str:
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri())
    run_id = _mlflow_run_of(client, run)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{which}_{set_name}_{key}", float(values[key]), now, 0)
        for set_name, values in results.items()
        for key in EVALUATION_METRICS
        if values.get(key) is not None
    ]
    client.log_batch(run_id, metrics=metrics)
    for set_name, out_dir in out_dirs.items():
        client.log_artifacts(run_id, str(out_dir), artifact_path=f"evaluation/{which}/{set_name}")
    return run_id


def _mlflow_run_of(client: Any, run: runs.Run) -> str:
    """The id of the run folder's MLflow run in this store: the one ``state.json`` names when it
    is here and is this run folder's, else a new one (saved in ``state.json``)."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    state = run.state()
    old = state.mlflow_run_id
    if old:
        try:
            if client.get_run(old).info.run_name == run.name:
                return old
        except MlflowException:  # not in this store
            pass
    tags = {"run_dir": str(run.path), "synthetic_data": str(run.synthetic)}
    if old:
        tags["copied_from_mlflow_run_id"] = old
    new = client.create_run(_experiment_id(), run_name=run.name, tags=tags).info.run_id
    params = [Param(k, str(v)) for k, v in run.params.as_dict().items()]
    client.log_batch(new, params=params)
    client.set_terminated(new, "FINISHED")
    state.mlflow_run_id = new
    state.save(run.path)
    if old:
        log.warning(
            "MLflow run %s of %s is not in %s (the run folder was made on another machine or "
            "another project): its evaluation goes to a new MLflow run %s, tagged "
            "copied_from_mlflow_run_id=%s, and state.json now names the new one",
            old,
            run.name,
            tracking_uri(),
            new,
            old,
        )
    else:
        log.info("%s was trained without tracking: its evaluation goes to a new MLflow run %s",
                 run.name, new)  # fmt: skip
    return new
