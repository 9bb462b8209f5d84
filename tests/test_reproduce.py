"""Tests for paperlib.reproduce's budget projection."""

from __future__ import annotations

import pytest

from paperlib.reproduce import BUDGET_GFLOPS, projected_seconds


def test_projection_scales_with_the_matmul_rate():
    assert projected_seconds(600.0, 360.0) == pytest.approx(600.0 * 360.0 / BUDGET_GFLOPS)
    assert projected_seconds(600.0, 120.0, at_gflops=240.0) == pytest.approx(300.0)
    with pytest.raises(ValueError, match="matmul rates"):
        projected_seconds(600.0, 0.0)
