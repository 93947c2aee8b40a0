"""What every figure shares: a Figure that renders once in Jupyter, and how it is written.

Every figure is built on a :class:`matplotlib.figure.Figure` directly, without pyplot: no global
figure state, no GUI backend needed (headless, threads, tests), and nothing to close. Given
``path`` a figure is also written there as a PNG. A plain ``Figure`` does not render as a Jupyter
cell's result unless pyplot's inline backend happens to be active, and one from
``pyplot.subplots`` renders twice; :class:`NotebookFigure` renders exactly once either way.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

DPI = 120
PathLike = str | os.PathLike[str] | None


class NotebookFigure(Figure):
    """A Figure that shows itself as a PNG when it is the last expression of a Jupyter cell."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure and its axes as a 2-D array."""
    fig = NotebookFigure(figsize=kwargs.pop("figsize", (6.4, 4.8)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def finish(fig: Figure, path: PathLike) -> Figure:
    """``fig``, written as a PNG to ``path`` first when one is given."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig
