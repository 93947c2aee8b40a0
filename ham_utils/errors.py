"""Errors and warnings about input data, and how warnings are shown.

A :class:`DataError` stops the pipeline with a message that names the file and the fix.
A :class:`DataWarning` says that rows were dropped, how many, and where their ids were written,
or that the data lacks something later steps need (a class missing from a split).
"""

from __future__ import annotations

import logging
import warnings
from typing import TextIO

WARNINGS_LOGGER = "py.warnings"  # the logger logging.captureWarnings uses


class DataError(Exception):
    """Input data that cannot be used as it is."""


class DataWarning(UserWarning):
    """Input data that was usable only after dropping or changing something."""


class WeightsUnavailableError(DataError):
    """Backbone weights that were asked for but cannot be found, read or converted."""


def format_warning(message: Warning | str, category: type[Warning]) -> str:
    """``Category: message``: without the file, line number and source line that Python's
    :func:`warnings.formatwarning` adds (they name our code, not the user's data)."""
    return f"{category.__name__}: {message}"


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A :func:`warnings.showwarning` that logs one line (``file`` given: writes it there)."""
    text = format_warning(message, category)
    if file is not None:
        file.write(text + "\n")
        return
    logging.getLogger(WARNINGS_LOGGER).warning(text)


def capture_warnings() -> None:
    """Log every warning as one line ``Category: message`` (no source line), and show each
    :class:`DataWarning` every time it is raised, also when a notebook cell runs again.

    Used instead of :func:`logging.captureWarnings` by the command line and the notebooks.
    """
    warnings.showwarning = _log_warning
    warnings.simplefilter("always", DataWarning)
