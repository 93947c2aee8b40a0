"""Errors and warnings about input data, and how warnings (and native start-up noise) are shown.

A :class:`DataError` stops the pipeline with a message that names the file and the fix.
A :class:`DataWarning` says that rows were dropped, how many, and where their ids were written,
or that the data lacks something later steps need (a class missing from a split).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
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


# What TensorFlow and XLA write natively (C++, straight to file descriptor 2) when they start
# on a machine without a GPU. No Python setting reaches all of it: TF_CPP_MIN_LOG_LEVEL covers
# TensorFlow's own logging but not absl's or XLA's, so the lines are filtered where they are
# written. Each entry is a fragment of one line.
NATIVE_NOISE: tuple[str, ...] = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",  # Could not find cuda drivers on your machine
    "cuda_platform.cc",  # failed call to cuInit
    "failed call to cuInit",
    "cpu_feature_guard.cc",  # This TensorFlow binary is optimized to use ... instructions
    "To enable the following instructions:",  # its second line
    "oneDNN custom operations are on",
    "Memory patch applied",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
)
_native_filter: threading.Thread | None = None


def filter_native_noise() -> None:
    """From now on, drop the lines of :data:`NATIVE_NOISE` that native code writes to file
    descriptor 2 (this process's and its children's); every other line passes unchanged.

    Python's own ``sys.stderr``, where it is that descriptor, is moved to a copy of the
    original, so that Python's messages never wait in the filter (and survive ``os._exit``).
    Call it before TensorFlow is imported; a second call does nothing. ipykernel and
    wurlitzer capture native output but cannot drop single lines, hence this reader thread.
    """
    global _native_filter
    if _native_filter is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO lines; warnings stay
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    noise = tuple(fragment.encode() for fragment in NATIVE_NOISE)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(original, "wb", buffering=0) as out:
            for line in pipe:
                if not any(fragment in line for fragment in noise):
                    out.write(line)

    _native_filter = threading.Thread(target=forward, name="native-noise-filter", daemon=True)
    _native_filter.start()
    if _is_descriptor(sys.stderr, 2):
        sys.stderr = open(os.dup(original), "w", buffering=1, encoding=sys.stderr.encoding)  # noqa: SIM115
    atexit.register(_drain_native_filter)


def _is_descriptor(stream: object, fd: int) -> bool:
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _drain_native_filter() -> None:
    """At exit: close the filter's pipe so that the lines still in it are written."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    except OSError:
        return
    if _native_filter is not None:
        _native_filter.join(timeout=2.0)  # a child that still holds the pipe keeps it open
