"""Every paired comparison the primary comparison reports carries its minimum detectable effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import TTestPower

from paperlib.stages import compare


def _mde(sd: float, n: int) -> float:
    return float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8,
                                          alternative="two-sided")) * sd


def test_paired_seed_table_mde_beside_every_result(env):
    p, _ = env
    table = compare.paired_seed_table(p)
    for _, row in table.iterrows():
        if row["sd_diff"] > 0:
            assert row["mde"] == pytest.approx(_mde(row["sd_diff"], int(row["K"])), rel=1e-9)
            assert row["mde_pct"] == pytest.approx(100 * row["mde"] / abs(row["mean_baseline"]), rel=1e-12)
        else:
            assert math.isnan(row["mde_pct"])
    assert {"mde", "mde_pct", "sd_diff"} <= set(table.columns)


def test_rate_matched_summary_has_its_mde(env):
    p, _ = env
    rows, summary = compare.rate_matched_table(p)
    sd = float(np.std(rows["rel_diff_pct"], ddof=1))
    assert summary["sd_diff_pct"] == pytest.approx(sd, rel=1e-12)
    assert summary["mde_pct"] == pytest.approx(_mde(sd, 2), rel=1e-9)


def test_mde_or_nan():
    assert compare.mde_or_nan(1.0, 5) == pytest.approx(_mde(1.0, 5), rel=1e-12)
    assert all(math.isnan(compare.mde_or_nan(sd, n)) for sd, n in ((0.0, 5), (1.0, 1), (math.nan, 5)))
