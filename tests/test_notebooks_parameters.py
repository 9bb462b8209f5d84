"""Every notebook's parameters cell is readable by papermill (``papermill --help-notebook``, ``-p``)."""

from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_inspectable(path, caplog):
    caplog.set_level("WARNING", logger="papermill")
    params = pm.inspect_notebook(str(path))
    # papermill skips (with a warning) any line with more than one "=", e.g. in a comment
    assert not [r.message for r in caplog.records if "Unable to parse" in r.message]
    assert "profile" in params
    assert all(p["help"] for p in params.values()), f"undocumented parameter in {path.name}"
