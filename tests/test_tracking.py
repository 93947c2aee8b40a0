"""MLflow tracking: the local store is created quietly."""

from conftest import project_env, run_python

# Creates the project's MLflow store from scratch with every logger at INFO, as a notebook's
# set-up does.
CREATE_STORE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", force=True)
from ham_utils.train import tracking
print("experiment", tracking._experiment_id(), file=sys.stderr)
"""


def test_a_new_store_is_created_without_info_chatter(project_root):
    result = run_python("-c", CREATE_STORE, env=project_env(project_root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project_root / "mlflow.db").is_file()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("experiment ")
    for chatter in ("Creating initial MLflow database tables", "Updating database tables"):
        assert chatter not in result.stderr
    assert not [line for line in lines if line.startswith("alembic")], lines


# Two cells as the notebooks run them: the set-up, then TensorFlow's first operation and a
# run tracked into a new MLflow store.
KERNEL_CELLS = (
    "from ham_utils.report.notebook import setup\nparams = setup('')",
    "import mlflow\nimport tensorflow as tf\n"
    "from ham_utils.train import tracking\n"
    "print(float(tf.constant(1.0) + 1))\n"
    "mlflow.set_tracking_uri(tracking.tracking_uri())\n"
    "with mlflow.start_run(experiment_id=tracking._experiment_id()):\n"
    "    mlflow.log_metric('loss', 1.0)\n"
    "print('tracked')",
)
KERNEL_NOISE = (
    "absl::InitializeLog",
    "cudart_stub",
    "cuInit",
    "cpu_feature_guard",
    "IProgress not found",
    "Creating initial MLflow database tables",
    "Updating database tables",
)


def test_a_notebook_kernel_shows_neither_start_up_lines_nor_tracking_chatter(
    project_root, monkeypatch
):
    import nbformat
    import papermill

    monkeypatch.setenv("HAM_PROJECT_ROOT", str(project_root))  # the kernel inherits it
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(source) for source in KERNEL_CELLS]
    source, executed = project_root / "in.ipynb", project_root / "out.ipynb"
    nbformat.write(book, source)
    papermill.execute_notebook(
        str(source), str(executed), kernel_name="python3", cwd=str(project_root), progress_bar=False
    )
    outputs = [o for c in nbformat.read(executed, as_version=4).cells for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "2.0" in text and "tracked" in text  # the cells ran and their output is shown
    assert [noise for noise in KERNEL_NOISE if noise in text] == [], text


def test_a_run_stopped_before_its_first_epoch_continues_its_mlflow_run(tmp_path, monkeypatch):
    """state.json names the MLflow run as soon as it is opened: a run stopped before its first
    epoch ended (nothing else saved) reopens the same MLflow run when it resumes."""
    import mlflow

    from ham_utils.config import load_params
    from ham_utils.runs import RunState
    from ham_utils.train import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HAM_PROJECT_ROOT", str(tmp_path))
    run_dir = tmp_path / "runs" / "demo-focal_weights-0123abcd"
    run_dir.mkdir(parents=True)
    params = load_params(None, {"run_name": "demo-focal_weights"})
    first = tracking.Tracker(params, run_dir, RunState())
    first.__enter__()
    first.__exit__(KeyboardInterrupt, None, None)  # stopped during the first epoch
    resumed = tracking.Tracker(params, run_dir, RunState.load(run_dir))
    with resumed:
        pass
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.run_id == RunState.load(run_dir).mlflow_run_id
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
