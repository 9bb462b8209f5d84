"""Reliability: a stored selection naming solo, a run outside the grid or nothing usable is refused with one
error naming the file, what is wrong and what to do; never trained or compared as "the selected joint"."""

from __future__ import annotations

import pytest

from paperlib.config.io import write_json
from paperlib.stages import cache, interp, select
from paperlib.stages.run import Run
from tests.helpers import tiny_profile

GOOD = dict(selected="joint-l0.3-s1", rule="r", max_dl2_pct=10.0, n_candidates=1, n_joint=1,
            delta_phi_selection_half_pct=-1.0, delta_phi_heldout_pct=-1.0, delta_phi_pct=-1.0, delta_l2_pct=1.0,
            mean_abs_phi=0.1, lambda2=0.3, sigma2=1.0)


@pytest.fixture()
def stored(tmp_artifacts, monkeypatch):
    """Write a selection result that the stage cache treats as fresh (no training needed)."""
    p = tiny_profile()
    monkeypatch.setattr(cache, "is_fresh", lambda *a, **k: True)
    path = cache.stage_dir("selection", profile=p) / "result.json"

    def write(**changes):
        write_json(path, {**GOOD, **changes})
        return p, path

    return write


def test_a_valid_selection_is_used(stored):
    p, _ = stored()
    assert select.selected_joint(p) == "joint-l0.3-s1"
    assert [r.name for r in select.select_runs(p, "joint")] == ["joint-l0.3-s1"]


@pytest.mark.parametrize("selected,why", [
    ("joint-l9-s9", "not a seed-0 joint configuration"),  # outside the grid
    ("solo", "not a seed-0 joint configuration"),  # would compare solo with itself
    ("joint-l0.3-s1-seed1", "not a seed-0 joint configuration"),
    ("ortho-g0.1", "not a seed-0 joint configuration"),
    ("banana", "not a run name"),
])
def test_a_selection_outside_the_grid_is_refused(stored, selected, why):
    p, path = stored(selected=selected)
    for call in (lambda: select.selected_joint(p), lambda: select.select_runs(p, "joint")):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert str(path) in msg and why in msg and f"Delete {path}" in msg


def test_an_unreadable_selection_is_refused(stored):
    p, path = stored()
    path.write_text('{"selected": "joint-l0.3-s1"}')  # fields missing
    with pytest.raises(ValueError, match="cannot be read as a selection"):
        select.ensure_selection(p)


def test_compare_runs_refuses_solo_against_itself(tmp_artifacts):
    p = tiny_profile()
    with pytest.raises(ValueError, match="same run 'solo' on both sides"):
        interp.compare_runs(Run.of(p, "solo"), Run.of(p, "solo"), 4, judge=None)
