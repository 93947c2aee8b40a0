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
