"""Convergence diagnostics from training records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from paperlib.metrics.convergence import convergence, relative_change, smoothed_at


def test_smoothed_and_relative_change_against_direct_means():
    v = np.arange(1, 101, dtype=float)
    assert smoothed_at(v, 1.0, 0.05) == pytest.approx(v[95:100].mean())
    assert smoothed_at(v, 0.8, 0.05) == pytest.approx(v[75:80].mean())
    assert relative_change(v) == pytest.approx(abs(v[95:].mean() - v[75:80].mean()) / v[95:].mean())
    assert relative_change([2.0] * 50) == 0.0
    assert math.isnan(smoothed_at([], 1.0))
    with pytest.raises(ValueError, match="frac"):
        smoothed_at(v, 0.0)


def _records(mse, meta=None):
    out = []
    for i, m in enumerate(mse):
        r = {"step": i + 1, "mse": m, "dead": 3}
        if meta is not None:
            r.update(meta_mse=meta[i], meta_err=meta[i])
        out.append(r)
    return out


def test_converged_and_not_converged_runs():
    flat = _records([1.0 / (1 + 0.0001 * i) for i in range(200)])
    c = convergence(flat, n_latents=1000, n_dead_eval=5)
    assert c["l2_ok"] and c["dead_ok"] and c["ok"] and c["dead_frac"] == 0.005
    falling = _records([1.0 / (1 + 0.05 * i) for i in range(200)])
    c = convergence(falling, n_latents=1000, n_dead_eval=5)
    assert not c["l2_ok"] and not c["ok"]
    assert not convergence(flat, n_latents=1000, n_dead_eval=10)["dead_ok"]  # exactly 1% is not < 1%
    meta_falling = _records([1.0] * 200, meta=[1.0 / (1 + 0.05 * i) for i in range(200)])
    c = convergence(meta_falling, n_latents=1000, n_dead_eval=0, trains_meta=True)
    assert c["l2_ok"] and not c["meta_ok"] and not c["ok"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="too few"):
        convergence(_records([1.0, 1.0]), 10, 0)
    with pytest.raises(ValueError, match="n_dead_eval"):
        convergence(_records([1.0] * 10), 10, 11)
