"""E₀|φ| under independent (hypergeometric) co-firing and the excess mean |φ| over it."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import hypergeom

import paperlib
from paperlib.metrics import cooccurrence as co


def _brute_null(a, b, T):
    """Σ_k |φ(k)| P(k) by direct enumeration of scipy.stats.hypergeom over the support, restricted to
    mean ± (20 sd + 30): the pmf at a cut edge is < 1e-25 (so the dropped mass is far below 1e-12; |φ| ≤ 1).
    scipy's pmf itself is accurate to ~1e-9 relative at T ≥ 1e6 (its total mass is 1 ± 1e-8 there)."""
    if a in (0, T) or b in (0, T):
        return 0.0
    mu = a * b / T
    sd = math.sqrt(mu * (T - a) * (T - b) / (T * (T - 1))) if T > 1 else 0.0
    lo = max(0, a + b - T, int(mu - 20 * sd) - 30)
    hi = min(a, b, int(mu + 20 * sd) + 30)
    k = np.arange(lo, hi + 1)
    p = hypergeom.pmf(k, T, a, b)
    assert abs(1.0 - p.sum()) < 1e-8
    assert (lo == max(0, a + b - T) or p[0] < 1e-25) and (hi == min(a, b) or p[-1] < 1e-25)
    den = math.sqrt(a * (T - a)) * math.sqrt(b * (T - b))
    return float(np.sum(np.abs(T * k - a * b) * p) / den)


def _exact_null(a, b, T):
    """E₀|φ| with exact rational pmf (math.comb) over the full support; float only at the end."""
    if a in (0, T) or b in (0, T):
        return 0.0
    tot = math.comb(T, b)
    s = sum(Fraction(abs(T * k - a * b) * math.comb(a, k) * math.comb(T - a, b - k), tot)
            for k in range(max(0, a + b - T), min(a, b) + 1))
    return float(s) / math.sqrt(a * (T - a) * b * (T - b))


def _pairs_for(T, mu, ratios=(1.0, 0.05, 20.0)):
    """(a, b) with a·b/T ≈ mu and a/b ≈ ratio, inside 1..T−1."""
    out = []
    for r in ratios:
        a = int(round(math.sqrt(mu * T * r)))
        a = min(max(a, 1), T - 1)
        b = min(max(int(round(mu * T / a)), 1), T - 1)
        out.append((a, b))
    return out


def test_null_abs_phi_exact_rational_small_T():
    worst = 0.0
    for T in (2, 3, 7, 31):
        for a in range(T + 1):
            for b in range(T + 1):
                ref = _exact_null(a, b, T)
                v = co.null_abs_phi(a, b, T)
                if ref == 0.0:
                    assert v == 0.0
                else:
                    worst = max(worst, abs(v / ref - 1.0))
    assert worst < 1e-12


@pytest.mark.parametrize("T", [10, 97, 1000, 100_003, 10**6, 10**7])
def test_null_abs_phi_small_mu_matches_enumeration(T):
    """μ < 5: exact to 1e-6 relative (measured ≤ 3e-9, the accuracy of scipy's pmf at large T)."""
    worst = 0.0
    for mu in (1e-3, 0.1, 0.9, 1.0, 2.5, 4.99):
        for a, b in _pairs_for(T, mu):
            if a * b / T >= 5:
                continue
            ref = _brute_null(a, b, T)
            worst = max(worst, abs(co.null_abs_phi(a, b, T) / ref - 1.0))
    assert worst < 1e-6


@pytest.mark.parametrize("T", [10**5, 10**6, 10**7])
def test_null_abs_phi_large_mu_within_bound(T):
    """μ from 5 to 10^5 (large T): the same closed form, within 0.1% (the measured difference, ≤ 3e-9, is
    the accuracy of scipy's pmf; against 40-digit mpmath it is ~1e-15, see below)."""
    worst = 0.0
    n = 0
    for mu in (5.0, 20.0, 100.0, 1e3, 1e4, 1e5):
        for a, b in _pairs_for(T, mu):
            if not 5 <= a * b / T or a * b / T > 1.01e5:
                continue
            ref = _brute_null(a, b, T)
            worst = max(worst, abs(co.null_abs_phi(a, b, T) / ref - 1.0))
            n += 1
    assert n >= 8
    assert worst < 1e-3
    assert worst < 1e-7  # effectively exact


def test_null_abs_phi_mpmath_large_T():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40

    def lc(n, k):
        return mpmath.loggamma(n + 1) - mpmath.loggamma(k + 1) - mpmath.loggamma(n - k + 1)

    for T, a, b in [(10**7, 3, 5), (10**7, 1000, 20000), (35_000_000, 100_000, 150_000)]:
        mu = a * b / T
        lo, hi = max(0, int(mu - 40 * math.sqrt(mu)) - 40), min(a, b, int(mu + 40 * math.sqrt(mu)) + 40)
        s = mpmath.fsum(abs(T * k - a * b) * mpmath.exp(lc(a, k) + lc(T - a, b - k) - lc(T, b))
                        for k in range(lo, hi + 1))
        ref = float(s / mpmath.sqrt(mpmath.mpf(a) * (T - a) * b * (T - b)))
        assert co.null_abs_phi(a, b, T) == pytest.approx(ref, rel=1e-10)


def test_null_abs_phi_properties_and_validation():
    T = 50_000
    assert co.null_abs_phi(0, 10, T) == 0.0 and co.null_abs_phi(T, 10, T) == 0.0
    assert co.null_abs_phi(10, 0, T) == 0.0 and co.null_abs_phi(10, T, T) == 0.0
    assert co.null_abs_phi(123, 4567, T) == pytest.approx(co.null_abs_phi(4567, 123, T), rel=1e-13)
    # complement symmetry: flipping a latent's firing flips the sign of φ
    assert co.null_abs_phi(123, 4567, T) == pytest.approx(co.null_abs_phi(T - 123, 4567, T), rel=1e-12)
    # large μ: → E|Z| σ_φ = sqrt(2 / (π (T − 1)))
    assert co.null_abs_phi(T // 2, T // 2, T) == pytest.approx(math.sqrt(2 / (math.pi * (T - 1))), rel=1e-3)
    a = np.array([[1, 10, 100]]).T
    b = np.array([5, 50, 500, 0])
    many = co.null_abs_phi_many(a, b, T)
    assert many.shape == (3, 4) and many.dtype == np.float64
    for i in range(3):
        for j in range(4):
            assert many[i, j] == co.null_abs_phi(int(a[i, 0]), int(b[j]), T)
    with pytest.raises(ValueError, match="n1_a"):
        co.null_abs_phi(float("nan"), 3, 10)
    with pytest.raises(ValueError, match="n1_b"):
        co.null_abs_phi(3, float("inf"), 10)
    with pytest.raises(ValueError, match="T"):
        co.null_abs_phi(3, 3, float("nan"))
    with pytest.raises(ValueError, match="n1_a"):
        co.null_abs_phi(11, 3, 10)
    with pytest.raises(ValueError, match="n1_b"):
        co.null_abs_phi(3, 2.5, 10)


def test_exports():
    assert paperlib.null_abs_phi is co.null_abs_phi
    assert paperlib.excess_abs_phi is co.excess_abs_phi
    assert {"null_abs_phi", "excess_abs_phi"} <= set(paperlib.__all__)
    assert {"null_abs_phi", "excess_abs_phi", "null_abs_phi_many", "mean_null_abs_phi"} <= set(co.__all__)


def _fired(T, n, seed, lo=1e-3, hi=0.3):
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    F = rng.random((T, n)) < rates
    shared = rng.random(T) < 0.1  # some dependence
    F[:, : n // 4] |= shared[:, None] & (rng.random((T, n // 4)) < 0.5)
    return F


def _brute_excess(F):
    T, n = F.shape
    N1 = F.sum(0).astype(np.int64)
    N11 = F.T.astype(np.int64) @ F.astype(np.int64)
    tot = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            den = N1[i] * (T - N1[i]) * N1[j] * (T - N1[j])
            ph = (T * N11[i, j] - N1[i] * N1[j]) / math.sqrt(den) if den > 0 else 0.0
            tot += abs(ph) - co.null_abs_phi(int(N1[i]), int(N1[j]), T)
    return tot / (n * (n - 1) / 2)


def test_excess_abs_phi_exact_matches_per_pair_loop():
    F = _fired(400, 30, 0)
    F[:, 0] = False  # dead
    F[:, 1] = True  # always on
    F[:, 2] = False
    F[:3, 2] = True  # rare
    c = co.count(F)
    ref = _brute_excess(F)
    assert co.excess_abs_phi(c, n_bins=None) == pytest.approx(ref, rel=1e-11, abs=1e-14)
    # ≤ n_bins + 1 distinct counts: the default is exact too
    assert co.excess_abs_phi(c) == pytest.approx(ref, rel=1e-11, abs=1e-14)
    # mean |φ| part equals within_stats
    ws = co.within_stats(c)
    null = co.mean_null_abs_phi(c.N1, c.T, n_bins=None)
    assert co.excess_abs_phi(c, n_bins=None) == pytest.approx(ws.mean_abs_phi - null, rel=1e-11)
    # block-wise from the sparse firing matrix (several row blocks)
    acc = co.SparseFiring.from_fired(F)
    assert co.excess_abs_phi(acc, n_bins=None, block_rows=7) == pytest.approx(ref, rel=1e-11, abs=1e-14)
    assert co.excess_abs_phi(c, n_bins=None, block_rows=7) == pytest.approx(ref, rel=1e-11, abs=1e-14)


def test_degenerate_pairs_contribute_zero():
    F = _fired(500, 20, 1, lo=0.02)
    c = co.count(F)
    assert np.all((c.N1 > 0) & (c.N1 < 500))
    G = np.concatenate([F, np.zeros((500, 3), bool), np.ones((500, 2), bool)], axis=1)
    n, m = 20, 25
    scale = (n * (n - 1)) / (m * (m - 1))
    assert co.excess_abs_phi(co.count(G), n_bins=None) == pytest.approx(
        scale * co.excess_abs_phi(c, n_bins=None), rel=1e-12)


def test_mean_null_binned_against_per_pair():
    T, n = 5000, 300
    rng = np.random.default_rng(3)
    N1 = np.clip(np.round(np.exp(rng.uniform(0, math.log(T / 3), n))), 1, T - 1).astype(np.int64)
    N1[:4] = [0, 0, T, T]
    assert np.unique(N1).size > 100
    direct = 0.0
    for i in range(n):
        direct += float(co.null_abs_phi_many(N1[i], N1[i + 1:], T).sum())
    direct /= n * (n - 1) / 2
    assert co.mean_null_abs_phi(N1, T, n_bins=None) == pytest.approx(direct, rel=1e-12)
    for nb, rel in ((8, 2e-2), (16, 5e-3), (64, 1e-3)):
        v = co.mean_null_abs_phi(N1, T, n_bins=nb)
        assert abs(v - direct) < 1e-3  # the documented bound (absolute)
        assert abs(v - direct) < rel * direct  # what it actually achieves
    # excess through the binned null equals the exact one up to the same error
    F = _fired(T, 120, 4, lo=2e-4, hi=0.4)
    c = co.count(F)
    assert abs(co.excess_abs_phi(c, n_bins=8) - co.excess_abs_phi(c, n_bins=None)) < 1e-3
    with pytest.raises(ValueError, match="n_bins"):
        co.mean_null_abs_phi(N1, T, n_bins=0)
    with pytest.raises(ValueError, match="N1"):
        co.mean_null_abs_phi(np.array([1.0, np.nan]), T)
