"""Run the numbered notebooks in order with papermill: the report of one parameter file.

Executed notebooks go to ``reports/<run_id>/`` with an HTML rendering of each; the figures
of the EDA, the preprocessing and the run's evaluation are gathered in ``figures/``. A failing
cell stops everything with the notebook's path and the cell's error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ham_utils.config import PACKAGE_DIR, Params, figures_root, reports_root, runs_root

log = logging.getLogger("ham_utils")

NOTEBOOKS_DIR = PACKAGE_DIR.parent / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message names the executed notebook and the error."""


def notebooks() -> list[Path]:
    """The numbered notebooks, in order."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks in {NOTEBOOKS_DIR}")
    return found


def _to_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _kernel_manager_class() -> type | None:
    """Kernels that talk over Unix sockets in Jupyter's runtime folder (POSIX), not over
    unencrypted localhost TCP ports that any local user could connect to (ipykernel warns of
    those at every start). ``None`` elsewhere: the default, TCP."""
    if os.name != "posix":
        return None
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class SocketKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

    return SocketKernelManager


def run_notebook(source: Path, target: Path, parameters: dict[str, Any]) -> float:
    """Execute one notebook into ``target`` (and its HTML); return the seconds it took."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    manager = _kernel_manager_class()
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=parameters,
            cwd=str(source.parent),
            progress_bar=False,
            kernel_name="python3",
            **({"kernel_manager_class": manager} if manager else {}),
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(
            f"{target}: cell {err.exec_count} raised {err.ename}: {err.evalue}\n"
            f"open {target} (or its .html) to see the cell and the traceback"
        ) from None
    finally:
        if target.is_file():
            _to_html(target)
    return time.perf_counter() - start


def collect_figures(run_dir: Path | None) -> list[Path]:
    """Copy the run's evaluation figures and Grad-CAM grids into ``figures/``."""
    copied = []
    if run_dir is None:
        return copied
    from ham_utils.runs import evaluation_at

    evaluation = evaluation_at(run_dir, "best")
    figures = figures_root()
    for folder in (evaluation.figures_dir(), evaluation.gradcam_dir):
        for png in sorted(folder.glob("*.png")):
            figures.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy2(png, figures / png.name)))
    return copied


def _quiet_papermill() -> None:
    """papermill and nbconvert log every notebook's paths and kernel chatter at INFO."""
    for name in ("papermill", "traitlets", "nbconvert"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_report(params: Params, params_file: Path | None, overrides: dict[str, Any]) -> Path:
    """Execute every numbered notebook with these parameters; return the report folder."""
    from ham_utils.runs import run_id

    _quiet_papermill()
    report_dir = reports_root() / run_id(params)
    report_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"params_file": str(params_file) if params_file else "", "overrides": overrides}
    seconds: dict[str, float] = {}
    for source in notebooks():
        log.info("running %s", source.name)
        seconds[source.stem] = round(run_notebook(source, report_dir / source.name, parameters), 1)
        log.info("%s done in %.0f s -> %s", source.name, seconds[source.stem], report_dir)
    (report_dir / "timing.json").write_text(json.dumps(seconds, indent=2) + "\n")
    run_dir = runs_root() / run_id(params)
    collect_figures(run_dir if run_dir.is_dir() else None)
    return report_dir
