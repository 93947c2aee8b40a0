"""``python -m ham_utils``: see :mod:`ham_utils.cli`."""

from ham_utils.cli import entry_point

raise SystemExit(entry_point())
