import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m ham_utils ARGS`` with every output under ``root``."""
    env = {**os.environ, "HAM_PROJECT_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "ham_utils", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project_root(tmp_path) -> Path:
    """An empty project folder for outputs (data/, runs/, mlflow.db)."""
    root = tmp_path / "project"
    root.mkdir()
    return root
