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
