"""``python -m jconv``: the `jconv` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
