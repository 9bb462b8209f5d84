"""The primary comparison: paired-seed tests against scipy, verdict words, convergence table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from paperlib.stages import compare
from tests.stages.conftest import NAMES, R


def test_paired_seed_table_matches_scipy_ttest_rel(env):
    p, _ = env
    table = compare.paired_seed_table(p)
    assert set(table["comparison"]) == {"joint vs solo", "randcritic vs solo", "joint vs randcritic"}
    assert set(table["statistic"]) == set(compare.STATISTICS)
    vals = {a: [compare.run_statistics(R(p, n)) for n in names]
            for a, names in {"solo": ["solo", "solo-seed1"], "joint": ["joint-l1-s0.5", "joint-l1-s0.5-seed1"],
                             "randcritic": ["randcritic-l1-s0.5", "randcritic-l1-s0.5-seed1"]}.items()}
    for _, row in table.iterrows():
        treat, base = row["comparison"].split(" vs ")
        a = [v[row["statistic"]] for v in vals[base]]
        b = [v[row["statistic"]] for v in vals[treat]]
        assert row["K"] == 2 and row["delta"] == pytest.approx(np.mean(b) - np.mean(a))
        if np.std(np.subtract(b, a)) > 0:
            ref = sps.ttest_rel(b, a)
            assert row["t"] == pytest.approx(ref.statistic) and row["p"] == pytest.approx(ref.pvalue)


def test_verdict_words_follow_the_interval():
    assert compare.verdict(-2.0, -0.5, -1.0).startswith("lower")
    assert compare.verdict(0.5, 2.0, 1.0).startswith("higher")
    assert compare.verdict(-1.0, 2.0, 0.5).startswith("no evidence")
    assert compare.verdict(float("nan"), 1.0, 0.0) == "not testable"


def _table(ci_alive, ci_excess, ci_rc=(-1.0, 1.0), ci_tail=(-1.0, 1.0)):
    rows = []
    comps = (("joint vs solo", (ci_alive, ci_excess, ci_tail)), ("joint vs randcritic", (ci_rc, ci_rc, ci_rc)))
    for comp, cis in comps:
        for stat, (lo, hi) in zip(("mean_abs_phi_alive", "excess_abs_phi", "frac_phi_gt_tail"), cis, strict=True):
            rows.append({"comparison": comp, "statistic": stat, "K": 5, "ci_low": lo, "ci_high": hi,
                         "verdict": compare.verdict(lo, hi, (lo + hi) / 2)})
    return pd.DataFrame(rows)


def test_overall_verdict_is_computed_from_the_intervals():
    assert compare.overall_verdict(_table((-1, 1), (-2, 0.5))).startswith("No evidence at this scale")
    assert "generic decoder repulsion" in compare.overall_verdict(_table((-2, -1), (-3, -1)))
    assert "exceeds what a random critic does" in compare.overall_verdict(_table((-2, -1), (-3, -1), (-2, -0.1)))
    assert compare.overall_verdict(_table((0.5, 1), (-1, 1))).startswith("The penalty raised")
    mixed = compare.overall_verdict(_table((-2, -1), (-3, -1), (-2, -0.1), ci_tail=(0.5, 1.0)))
    assert "frac_phi_gt_tail rises" in mixed and mixed.startswith("Evidence")
    assert compare.overall_verdict(pd.DataFrame()).startswith("The primary comparison has not run")


def test_convergence_table_has_every_run_and_names_its_tokens(env):
    p, _ = env
    conv = compare.convergence_table([R(p, n) for n in NAMES])
    assert list(conv["run"]) == NAMES
    assert (conv["dead_on_tokens"] == 512).all()
    assert conv.loc[conv["arm"] == "joint", "meta_err_final"].notna().all()
    assert conv.loc[conv["arm"] == "randcritic", "meta_change_last20"].isna().all()  # its critic is frozen


def test_rate_matched_table_per_seed(env):
    p, _ = env
    rows, summary = compare.rate_matched_table(p)
    assert list(rows["seed"]) == [0, 1] and summary["K"] == 2
    assert np.isfinite(summary["mean_rel_diff_pct"])
    assert summary["mean_rel_diff_pct"] == pytest.approx(rows["rel_diff_pct"].mean())
