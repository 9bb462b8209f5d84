"""``python -m paperlib.export``: the SAELens export command line of :mod:`paperlib.stages.export` (``--help``)."""

from paperlib.stages.export import main

if __name__ == "__main__":
    raise SystemExit(main())
