"""Run names and the arm registry."""


from __future__ import annotations

import pytest

from paperlib.sae.arms import RunSpec, grid_runs, parse_run, select_runs


def test_runs_names_round_trip():
    for spec in grid_runs("default"):
        assert parse_run(spec.name) == spec
    assert parse_run("joint-l0.3-s1.0") == RunSpec("joint", lambda2=0.3, sigma2=1.0)
    assert [r.name for r in select_runs("smoke", "solo,control")] == ["solo", "control"]
    with pytest.raises(ValueError, match="cannot parse run name"):
        parse_run("jointy")
    names = [r.name for r in grid_runs("default")]
    assert names[0] == "solo" and "control" in names and "solo-seed3" in names
    assert sum(n.startswith("joint-") for n in names) == 9

