"""The §6 table and figure (paperlib.report.second_model)."""

import math

import numpy as np
import pandas as pd
import pytest

from paperlib.report.second_model import GEMMA_COLUMNS, gemma_figure, gemma_table


def _grid() -> pd.DataFrame:
    return pd.DataFrame({"run": ["solo", "joint-l0.3-s1", "joint-l1-s3"], "lambda2": [math.nan, 0.3, 1.0],
                         "sigma2": [math.nan, 1.0, 3.0], "mean_abs_phi": [0.02, 0.018, 0.017],
                         "delta_phi_pct": [0.0, -10.0, -15.0], "delta_phi_alive_pct": [0.0, -5.0, -6.0],
                         "delta_excess_pct": [0.0, -8.0, -9.0], "frac_phi_gt_tail": [0.01, 0.009, 0.008],
                         "converged": [True, True, False], "l2": [0.1, 0.105, 0.11],
                         "delta_l2_pct": [0.0, 5.0, 10.0], "l0": [8.0, 8.0, 8.0],
                         "ce_overhead_pct": [1.0, 1.2, 1.3], "dead_latents": [0, 1, 2],
                         "welch_p": [math.nan, 0.01, 0.001], "arm": ["solo", "joint", "joint"]})


def _fuzz() -> pd.DataFrame:
    return pd.DataFrame({"run": ["solo", "joint-l0.3-s1", "joint-l1-s3"], "n_fuzz": [3, 3, 2],
                         "fuzz_mean": [0.4, 0.5, 0.3], "fuzz_sem": [0.03, 0.04, 0.05],
                         "dfuzz": [0.0, 0.1, -0.1], "dfuzz_se": [math.nan, 0.05, 0.06],
                         "dfuzz_pct": [0.0, 25.0, -25.0]})


def test_gemma_table_columns_and_merge():
    t = gemma_table(_grid(), _fuzz())
    assert list(t.columns) == GEMMA_COLUMNS
    assert t.loc[1, "dphi_pct"] == -10.0 and t.loc[2, "dl2_pct"] == 10.0
    assert t.loc[1, "dfuzz_pct"] == pytest.approx(25.0) and t.loc[2, "n_fuzz"] == 2
    no_fuzz = gemma_table(_grid())
    assert no_fuzz["fuzz_mean"].isna().all() and (no_fuzz["n_fuzz"] == 0).all()
    missing = gemma_table(_grid(), _fuzz().iloc[:2])  # a run without fuzz scores gets NaN
    assert missing.loc[:1, "fuzz_mean"].tolist() == [0.4, 0.5] and missing.loc[2, ["n_fuzz", "fuzz_mean"]].isna().all()


def test_gemma_figure_panels():
    fig = gemma_figure(gemma_table(_grid(), _fuzz()), "title")
    left, right = fig.axes[:2]
    offsets = np.vstack([c.get_offsets() for c in left.collections])
    np.testing.assert_allclose(offsets, [[-10.0, 5.0], [-15.0, 10.0]])  # (Δ|φ| %, ΔL2 %) per joint config
    np.testing.assert_allclose([p.get_height() for p in right.patches], [0.1, -0.1])
    assert [t.get_text() for t in right.texts] == ["n=3", "n=2", "solo: mean fuzz 0.400 on n=3 features"]
    assert fig._suptitle.get_text() == "title"
    empty = gemma_figure(gemma_table(_grid()))
    assert "no fuzz scores" in empty.axes[1].texts[0].get_text()
