"""Rate-robust within-SAE statistics, the firing-rate-matched comparison and seed-level tests."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.power import TTestPower

from paperlib.metrics import cooccurrence as co
from paperlib.metrics import stats
from tests.helpers import brute_phi


def _fired(T=600, n=40, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(math.log(2e-3), math.log(0.4), n))
    F = rng.random((T, n)) < rates
    shared = rng.random(T) < 0.15
    F[:, : n // 3] |= shared[:, None] & (rng.random((T, n // 3)) < 0.6)  # correlated group
    F[:, 0] = False  # dead
    F[:, 1] = True  # always on
    F[:, 2] = False
    F[:3, 2] = True  # fires 3 times (< min_count)
    F[:, 3] = True
    F[:2, 3] = False  # silent on 2 tokens
    return F


def _brute(F, min_count=5, tail=0.1, min_expected=5.0):
    T, n = F.shape
    N1, N11, ph = brute_phi(F)
    alive = (N1 >= min_count) & (T - N1 >= min_count)
    allv, alv, expv, nulls = [], [], [], []
    for i in range(n):
        for j in range(i + 1, n):
            allv.append(ph[i, j])
            nulls.append(co.null_abs_phi(int(N1[i]), int(N1[j]), T))
            if alive[i] and alive[j]:
                alv.append(ph[i, j])
            if N1[i] * N1[j] / T >= min_expected:
                expv.append(ph[i, j])
    allv, alv, expv = map(np.array, (allv, alv, expv))
    rows = {}
    idx = np.flatnonzero(alive)
    for i in idx:
        rows[int(i)] = np.mean([abs(ph[i, j]) for j in idx if j != i])
    return {
        "mean_abs_phi_all": np.abs(allv).mean(), "mean_abs_phi_alive": np.abs(alv).mean(),
        "n_alive": int(alive.sum()), "n_pairs_alive": alv.size,
        "excess_abs_phi": float(np.mean(np.abs(allv) - np.array(nulls))),
        "frac_phi_gt_tail": float((allv > tail).mean()),
        "mean_phi_expected5": expv.mean(), "mean_abs_phi_expected5": np.abs(expv).mean(),
        "n_pairs_expected5": expv.size, "n_pairs": allv.size,
    }, rows


def test_rate_robust_stats_match_brute_force():
    F = _fired()
    ref, rows = _brute(F)
    c = co.count(F)
    for br in (None, 7):
        got = co.rate_robust_stats(c, n_bins=None, block_rows=br)
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-11, abs=1e-14), k
    assert not set(rows) & {0, 1, 2, 3} and ref["n_alive"] == len(rows) > 20
    assert 0 < ref["frac_phi_gt_tail"] < 1
    assert 0 < ref["n_pairs_expected5"] < ref["n_pairs"]
    # matches the existing within-SAE mean
    assert got["mean_abs_phi_all"] == pytest.approx(co.within_stats(c).mean_abs_phi, rel=1e-12)
    # other thresholds
    ref2, _ = _brute(F, min_count=20, tail=0.05, min_expected=1.0)
    got2 = co.rate_robust_stats(c, min_count=20, tail=0.05, min_expected=1.0, n_bins=None)
    for k, v in ref2.items():
        assert got2[k] == pytest.approx(v, rel=1e-11, abs=1e-14), k
    # row means
    idx, rm = co.row_mean_abs_phi(c)
    assert list(idx) == sorted(rows)
    np.testing.assert_allclose(rm, [rows[i] for i in idx], rtol=1e-12)
    idx_b, rm_b = co.row_mean_abs_phi(co.SparseFiring.from_fired(F), block_rows=5)
    np.testing.assert_array_equal(idx_b, idx)
    np.testing.assert_allclose(rm_b, rm, rtol=1e-12)


def test_blockwise_equals_dense():
    F = _fired(T=800, n=57, seed=5)
    c = co.count(F)
    dense = co.rate_robust_stats(c)
    acc = co.SparseFiring.from_fired(F)
    for br in (None, 1, 8, 56):
        blk = co.rate_robust_stats_blockwise(acc, block_rows=br, progress=False)
        assert blk.keys() == dense.keys()
        for k, v in dense.items():
            assert blk[k] == pytest.approx(v, rel=1e-12, abs=1e-15), (k, br)
    blk = co.rate_robust_stats_blockwise(F, progress=False)  # raw dense firing accepted too
    assert blk["n_pairs_expected5"] == dense["n_pairs_expected5"]


def test_rate_robust_validation():
    c = co.count(_fired(T=100, n=6))
    with pytest.raises(ValueError, match="tail"):
        co.rate_robust_stats(c, tail=float("nan"))
    with pytest.raises(ValueError, match="min_expected"):
        co.rate_robust_stats(c, min_expected=float("inf"))
    with pytest.raises(ValueError, match="min_count"):
        co.rate_robust_stats(c, min_count=0)


def test_rate_matched_delta_matches_statsmodels():
    Fa, Fb = _fired(T=700, n=45, seed=1), _fired(T=650, n=38, seed=2)
    ca, cb = co.count(Fa), co.count(Fb)
    _, rows_a = _brute(Fa)
    _, rows_b = _brute(Fb)
    y = np.array([rows_a[i] for i in sorted(rows_a)] + [rows_b[i] for i in sorted(rows_b)])
    lr = np.log(np.concatenate([ca.N1[sorted(rows_a)] / ca.T, cb.N1[sorted(rows_b)] / cb.T]))
    arm = np.r_[np.zeros(len(rows_a)), np.ones(len(rows_b))]
    fit = OLS(y, np.column_stack([np.ones_like(y), arm, lr])).fit(cov_type="HC3")
    ci = fit.conf_int(0.05)
    r = co.rate_matched_delta(ca, cb)
    assert r["coef_arm"] == pytest.approx(fit.params[1], rel=1e-9)
    assert r["se_arm"] == pytest.approx(fit.bse[1], rel=1e-9)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci[1, 0], ci[1, 1]), rel=1e-9)
    assert r["coef_log_rate"] == pytest.approx(fit.params[2], rel=1e-9)
    mean_a = y[arm == 0].mean()
    assert r["rel_diff_pct"] == pytest.approx(100 * fit.params[1] / mean_a, rel=1e-9)
    assert r["rel_ci_low_pct"] == pytest.approx(100 * ci[1, 0] / mean_a, rel=1e-9)
    assert r["raw_diff"] == pytest.approx(y[arm == 1].mean() - mean_a, rel=1e-9)
    assert r["n_a"] == len(rows_a) and r["n_b"] == len(rows_b)
    # stratified check: pooled equal-count cells of log rate
    edges = np.quantile(lr, np.linspace(0, 1, 11))
    cell = np.clip(np.searchsorted(edges, lr, side="right") - 1, 0, 9)
    num = den = 0.0
    for k in range(10):
        a_, b_ = (cell == k) & (arm == 0), (cell == k) & (arm == 1)
        if a_.any() and b_.any():
            num += (a_.sum() + b_.sum()) * (y[b_].mean() - y[a_].mean())
            den += a_.sum() + b_.sum()
    assert r["cell_diff"] == pytest.approx(num / den, rel=1e-9)
    assert sum(x["n_a"] + x["n_b"] for x in r["cells"]) == y.size
    # block-wise inputs give the same answer
    r2 = co.rate_matched_delta(co.SparseFiring.from_fired(Fa), co.SparseFiring.from_fired(Fb))
    assert r2["coef_arm"] == pytest.approx(r["coef_arm"], rel=1e-10)


def _twin_arm(rng, T, n_pairs, lo, hi):
    """Latent pairs ("twins") with equal firing rate p whose φ = 0.1 + 0.15·log(p/0.02) depends only on
    the rate; all other pairs independent. Two arms built this way differ only in their firing rates."""
    cols = []
    for _ in range(n_pairs):
        p = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        target = 0.1 + 0.15 * np.log(p / 0.02)
        q = target * (1 - p) + p  # P(twin | x) so that φ(x, twin) = target and P(twin) = p
        r = p * (1 - q) / (1 - p)
        x = rng.random(T) < p
        cols += [x, np.where(x, rng.random(T) < q, rng.random(T) < r)]
    return np.column_stack(cols)


def test_rate_matched_delta_arms_differing_only_in_rates():
    rng = np.random.default_rng(2)
    T = 100_000
    Fa, Fb = _twin_arm(rng, T, 100, 0.02, 0.1), _twin_arm(rng, T, 100, 0.04, 0.2)
    r = co.rate_matched_delta(co.count(Fa), co.count(Fb))
    assert r["raw_rel_pct"] > 8  # the raw comparison sees a large difference ...
    assert abs(r["coef_arm"]) < 0.2 * abs(r["raw_diff"])  # ... that is all firing rate
    assert abs(r["rel_diff_pct"]) < 2
    assert r["ci_low"] < 0 < r["ci_high"]
    assert abs(r["cell_diff"]) < 0.2 * abs(r["raw_diff"])
    assert r["coef_log_rate"] > 0


def test_paired_seeds_matches_scipy():
    rng = np.random.default_rng(4)
    a = rng.normal(2.15e-3, 2e-5, 5)
    b = a * (1 - 0.075) + rng.normal(0, 2e-5, 5)
    ref = sps.ttest_rel(b, a)
    r = stats.paired_seeds(a, b)
    assert isinstance(r, stats.PairedResult)
    assert r.n == 5 and r.df == 4
    assert r.t == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert r.mean_diff == pytest.approx((b - a).mean(), rel=1e-12)
    assert r.rel_diff_pct == pytest.approx(100 * (b - a).mean() / a.mean(), rel=1e-12)
    assert r.rel_ci_low_pct == pytest.approx(100 * ci.low / a.mean(), rel=1e-10)
    assert r.rel_ci_high_pct == pytest.approx(100 * ci.high / a.mean(), rel=1e-10)
    assert r.mean_a == pytest.approx(a.mean()) and r.mean_b == pytest.approx(b.mean())
    r90 = stats.paired_seeds(a, b, confidence=0.9)
    ci90 = ref.confidence_interval(0.9)
    assert (r90.ci_low, r90.ci_high) == pytest.approx((ci90.low, ci90.high), rel=1e-10)
    assert r.to_dict()["rel_diff_pct"] == r.rel_diff_pct
    with pytest.raises(ValueError, match="b_by_seed"):
        stats.paired_seeds(a, np.r_[b[:-1], np.nan])
    with pytest.raises(ValueError, match="a_by_seed"):
        stats.paired_seeds(np.r_[a[:-1], np.inf], b)
    with pytest.raises(ValueError):
        stats.paired_seeds(a, b[:-1])


def test_min_detectable_effect_matches_statsmodels():
    for sd, n, alpha, power in ((2e-5, 5, 0.05, 0.8), (1.0, 3, 0.05, 0.8), (0.3, 20, 0.01, 0.9)):
        d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
        mde = stats.min_detectable_effect(sd, n, alpha=alpha, power=power)
        assert mde == pytest.approx(float(d) * sd, rel=1e-12)
        # round trip: the power at that effect is the requested power
        assert TTestPower().power(mde / sd, n, alpha) == pytest.approx(power, abs=1e-6)
    assert stats.min_detectable_effect(1.0, 50) < stats.min_detectable_effect(1.0, 5)
    with pytest.raises(ValueError, match="sd_diff"):
        stats.min_detectable_effect(float("nan"), 5)
    with pytest.raises(ValueError, match="n"):
        stats.min_detectable_effect(1.0, 1)


def test_pooled_rate_regression_has_seed_clustered_errors():
    """The pooled regression over seed pairs against a hand-computed cluster-robust sandwich with statsmodels'
    small-sample factor G/(G−1)·(N−1)/(N−k) and a t with G − 1 degrees of freedom."""
    from scipy import stats as st

    groups = []
    for s in range(4):
        ca, cb = co.count(_fired(T=500, n=30, seed=10 + s)), co.count(_fired(T=500, n=28, seed=20 + s))
        groups.append(co.rate_matched_delta(ca, cb)["latents"])
    r = co.pooled_rate_regression(groups)
    y = np.concatenate([g["row_mean"] for g in groups])
    arm = np.concatenate([g["arm"] for g in groups])
    lr = np.concatenate([g["log_rate"] for g in groups])
    gid = np.concatenate([np.full(len(g["row_mean"]), k) for k, g in enumerate(groups)])
    X = np.column_stack([np.ones_like(y), arm, lr] + [(gid == k).astype(float) for k in range(1, 4)])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    u = y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    meat = sum(np.outer(X[gid == k].T @ u[gid == k], X[gid == k].T @ u[gid == k]) for k in range(4))
    n, kx, g = len(y), X.shape[1], 4
    V = bread @ meat @ bread * g / (g - 1) * (n - 1) / (n - kx)
    se = np.sqrt(V[1, 1])
    assert r["coef_arm"] == pytest.approx(beta[1], rel=1e-9) and r["se_arm"] == pytest.approx(se, rel=1e-9)
    assert r["df"] == g - 1
    q = st.t.ppf(0.975, g - 1)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((beta[1] - q * se, beta[1] + q * se), rel=1e-9)
    assert r["p_arm"] == pytest.approx(2 * st.t.sf(abs(beta[1] / se), g - 1), rel=1e-7)
    assert r["rel_pct"] == pytest.approx(100 * beta[1] / y[arm == 0].mean(), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        co.pooled_rate_regression(groups[:1])
