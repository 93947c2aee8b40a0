"""Errors and warnings about input data.

A :class:`DataError` stops the pipeline with a message that names the file and the fix.
A :class:`DataWarning` says that rows were dropped, how many, and where their ids were written.
"""


class DataError(Exception):
    """Input data that cannot be used as it is."""


class DataWarning(UserWarning):
    """Input data that was usable only after dropping or changing something."""


class WeightsUnavailableError(DataError):
    """Backbone weights that were asked for but cannot be found, read or converted."""
