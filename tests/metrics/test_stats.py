import numpy as np
import pytest
from scipy import stats as sps

from paperlib.metrics import stats


def test_welch_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, 40)
    b = rng.normal(0.5, 3.0, 65)
    ref = sps.ttest_ind(a, b, equal_var=False)
    r = stats.welch(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    assert r.t == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert r.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert r.ci_low == pytest.approx(ci.low, rel=1e-8) and r.ci_high == pytest.approx(ci.high, rel=1e-8)
    assert r.diff == pytest.approx(a.mean() - b.mean())
    t, df, p = r
    assert (t, df, p) == (r.t, r.df, r.p)
    s = stats.welch_from_sums(a.size, a.sum(), (a * a).sum(), b.size, b.sum(), (b * b).sum())
    assert s.t == pytest.approx(ref.statistic, rel=1e-9)
    assert s.p == pytest.approx(ref.pvalue, rel=1e-7)


def test_welch_huge_t_has_finite_log_p():
    r = stats.welch(0.0020, 1e-6, 209_704_960, 0.00216, 1.1e-6, 209_704_960)
    assert r.t < -50
    assert r.p == 0.0 or r.p < 1e-300
    assert np.isfinite(r.log10_p) and r.log10_p < -300
    r = stats.welch(0.0020, 0.9e-5, 1000, 0.00216, 1.1e-5, 1000)  # moderate tail: matches scipy
    assert r.log10_p == pytest.approx(np.log10(2 * sps.t.sf(abs(r.t), r.df)), rel=1e-9)
    r = stats.welch(0.0, 1e-12, 5, 1.0, 1e-12, 5)  # small df, far tail, scipy still finite
    assert r.log10_p == pytest.approx(np.log10(2 * sps.t.sf(abs(r.t), r.df)), rel=1e-6)
    # small df, underflowing tail: asymptotic power law, continuous with scipy where both work
    p_scipy, lp_scipy = stats._t_p(1e30, 10.0)
    assert lp_scipy == pytest.approx(np.log10(2 * sps.t.sf(1e30, 10.0)), rel=1e-6)
    p_far, lp_far = stats._t_p(1e40, 10.0)
    assert p_far == 0.0 and lp_far == pytest.approx(lp_scipy - 100, rel=1e-6)
    with pytest.raises(ValueError):
        stats.welch(0, 1, 1, 0, 1, 5)


def test_paired_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(0.6, 0.1, 50)
    b = a - rng.normal(0.02, 0.05, 50)
    ref = sps.ttest_rel(a, b)
    r = stats.paired(a, b)
    assert r.t == pytest.approx(ref.statistic, rel=1e-10)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-8)
    ci = ref.confidence_interval(0.95)
    assert r.ci_low == pytest.approx(ci.low, rel=1e-8) and r.ci_high == pytest.approx(ci.high, rel=1e-8)
    d = a - b
    assert r.cohens_d == pytest.approx(d.mean() / d.std(ddof=1))
    assert r.std_diff == pytest.approx(d.std(ddof=1))
    with pytest.raises(ValueError):
        stats.paired(a, b[:-1])


def test_bootstrap_seeded_and_covers():
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 1.0, 200)
    e1 = stats.bootstrap_ci(x, n_boot=2000, seed=3)
    e2 = stats.bootstrap_ci(x, n_boot=2000, seed=3)
    assert e1 == e2
    est, lo, hi = e1
    assert lo < est < hi and est == pytest.approx(x.mean())
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    est, lo, hi = stats.bootstrap_ci(x, statistic=lambda r: float(np.median(r)), n_boot=300, seed=0)
    assert lo <= est <= hi


def test_noise_floor():
    nf = stats.noise_floor([2.14e-3, 2.15e-3, 2.16e-3, 2.15e-3])
    assert nf.mean == pytest.approx(2.15e-3)
    assert nf.std == pytest.approx(np.std([2.14e-3, 2.15e-3, 2.16e-3, 2.15e-3], ddof=1))
    assert nf.spread == pytest.approx(2e-5)
    assert nf.n == 4
    with pytest.raises(ValueError):
        stats.noise_floor([1.0])


def test_welch_within_from_cooccurrence():
    from paperlib.metrics import cooccurrence as co

    rng = np.random.default_rng(4)
    A = rng.random((300, 10)) < 0.2
    B = rng.random((300, 10)) < 0.2
    B[:, 1] = B[:, 0]
    wa, wb = co.within_stats(co.count(A)), co.within_stats(co.count(B))
    pa = np.abs(co.phi(co.count(A))[np.triu_indices(10, 1)])
    pb = np.abs(co.phi(co.count(B))[np.triu_indices(10, 1)])
    ref = sps.ttest_ind(pa, pb, equal_var=False)
    r = stats.welch_within(wa, wb)
    assert r.t == pytest.approx(ref.statistic, rel=1e-9)
    s = stats.welch_from_sums(wa.n_pairs, wa.sum_abs, wa.sumsq, wb.n_pairs, wb.sum_abs, wb.sumsq)
    assert s.t == pytest.approx(ref.statistic, rel=1e-8)


def test_prediction_test_matches_scipy_t():
    """t = (x − mean) / (s·√(1 + 1/K)), K − 1 df, two-sided, computed with scipy.stats.t directly."""
    seeds = np.array([2.14e-3, 2.15e-3, 2.17e-3, 2.13e-3, 2.16e-3])
    k = seeds.size
    for x in (2.0e-3, 2.151e-3, 2.3e-3):
        r = stats.prediction_test(x, seeds)
        se = seeds.std(ddof=1) * np.sqrt(1 + 1 / k)
        t = (x - seeds.mean()) / se
        assert r.t == pytest.approx(t, rel=1e-12) and r.df == k - 1 and r.n == k
        assert r.p == pytest.approx(2 * sps.t.sf(abs(t), k - 1), rel=1e-10)
        half = sps.t.ppf(0.975, k - 1) * se
        assert (r.pi_low, r.pi_high) == (pytest.approx(seeds.mean() - half), pytest.approx(seeds.mean() + half))
    # p = 0.05 exactly on the edge of the 95% prediction interval: the test belongs to the interval
    r = stats.prediction_test(0.0, seeds)
    assert stats.prediction_test(r.pi_high, seeds).p == pytest.approx(0.05, rel=1e-9)
    # invariant to an affine rescaling of both sides (raw mean |φ| or Δ% against solo seed 0)
    pct = 100 * (seeds - seeds[0]) / seeds[0]
    assert stats.prediction_test(100 * (2.3e-3 - seeds[0]) / seeds[0], pct).p == pytest.approx(
        stats.prediction_test(2.3e-3, seeds).p, rel=1e-9)
    assert stats.prediction_test(1.0, [1.0, 1.0]).p != stats.prediction_test(1.0, [1.0, 1.0]).p  # NaN: no spread
    assert stats.prediction_test(2.0, [1.0, 1.0]).p == 0.0
    with pytest.raises(ValueError, match="reference needs at least 2"):
        stats.prediction_test(1.0, [1.0])
    with pytest.raises(ValueError, match="value"):
        stats.prediction_test(float("nan"), [1.0, 2.0])


def test_holm_matches_statsmodels_and_hand_computation():
    from statsmodels.stats.multitest import multipletests

    # hand-computed: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 → 0.04, 0.06, 0.06, 0.04 → running max
    p = np.array([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(stats.holm(p), [0.06, 0.04, 0.06, 0.06], rtol=1e-12)
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], rtol=0, atol=0)
    rng = np.random.default_rng(5)
    q = rng.uniform(0, 0.2, 10)
    np.testing.assert_array_equal(stats.holm(q), multipletests(q, method="holm")[1])
    np.testing.assert_array_equal(stats.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    # NaN (a test not run) stays NaN and is not part of the family
    got = stats.holm([np.nan, 0.03, 0.01, np.nan, 0.04, 0.02])
    assert np.isnan(got[[0, 3]]).all()
    np.testing.assert_allclose(got[[1, 2, 4, 5]], [0.06, 0.04, 0.06, 0.06], rtol=1e-12)
    assert np.isnan(stats.holm([np.nan])).all() and stats.holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.1, 1.5])
