"""``python -m jconv``: the `jconv` console script."""

from .cli import main

raise SystemExit(main())
