"""``python -m paperlib``: the per-stage command line of :mod:`paperlib.cli` (``--help``)."""

from paperlib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
