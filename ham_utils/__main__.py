"""``python -m ham_utils``: see :mod:`ham_utils.cli`."""

from ham_utils.cli import main

raise SystemExit(main())
