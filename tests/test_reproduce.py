"""Tests for paperlib.reproduce's budget projection."""

from __future__ import annotations

import pytest

from paperlib.reproduce import BUDGET_GFLOPS, projected_seconds


def test_projection_scales_with_the_matmul_rate():
    assert projected_seconds(600.0, 360.0) == pytest.approx(600.0 * 360.0 / BUDGET_GFLOPS)
    assert projected_seconds(600.0, 120.0, at_gflops=240.0) == pytest.approx(300.0)
    with pytest.raises(ValueError, match="matmul rates"):
        projected_seconds(600.0, 0.0)


def test_budgeted_stages_are_kept_as_measured():
    """Notebook 05 fills a wall-time budget on any machine, so only the other stages scale with the rate."""
    from paperlib.reproduce import FIXED_BUDGET_STAGES
    from paperlib.stages.interp import default_budget_s

    assert FIXED_BUDGET_STAGES == ("05_autointerp",) and default_budget_s("default") == 150
    assert projected_seconds(1350.0, 329.0, fixed_seconds=150.0) == pytest.approx(1200.0 * 329.0 / 120 + 150.0)
    assert projected_seconds(600.0, 120.0, fixed_seconds=600.0) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="fixed_seconds"):
        projected_seconds(600.0, 300.0, fixed_seconds=700.0)
