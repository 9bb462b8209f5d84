"""Statistical tests for the paper's comparisons (method.md §3.3).

* :func:`welch` / :func:`welch_from_sums` — Welch's unequal-variance t-test from summary or streamed
  sufficient statistics (count, Σx, Σx²), Welch–Satterthwaite df, two-sided p, the difference
  ``mean_a − mean_b`` with its confidence interval, and ``log10_p`` (p underflows to 0 for |t| ≳ 40
  at large df; ``log10_p`` does not).
* :func:`paired` — paired t-test (same as ``scipy.stats.ttest_rel(a, b)``) with CI and Cohen's d_z.
* :func:`bootstrap_ci` — seeded percentile bootstrap.
* :func:`noise_floor` — spread of a statistic (e.g. mean |φ|) across independent solo seeds.
* :func:`prediction_test` — does one new value (a single-seed configuration) lie outside the spread of K
  reference values (the solo seeds)? Prediction-interval t test, K − 1 df.
* :func:`holm` — Holm's step-down adjustment of a family of p-values (statsmodels ``multipletests``).

All variances are sample variances (ddof = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from paperlib.metrics.streaming import StreamingMoments, finite_array

__all__ = [
    "NoiseFloor",
    "PairedResult",
    "WelchResult",
    "bootstrap_ci",
    "mean_var_from_sums",
    "noise_floor",
    "paired",
    "welch",
    "welch_from_sums",
    "welch_within",
]


@dataclass(frozen=True)
class WelchResult:
    """Welch test of ``mean_a − mean_b``. Unpacks as ``t, df, p = welch(...)``."""

    t: float
    df: float
    p: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    confidence: float
    log10_p: float
    mean_a: float
    mean_b: float
    rel_diff: float  # diff / mean_b (e.g. Δ mean |φ| as a fraction of the solo value)

    def __iter__(self) -> Iterator[float]:
        return iter((self.t, self.df, self.p))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _t_p(t: float, df: float) -> tuple[float, float]:
    """Two-sided p and log10 p for a t statistic."""
    if not np.isfinite(t):
        return (0.0, -math.inf) if abs(t) == math.inf else (math.nan, math.nan)
    logsf = float(sps.t.logsf(abs(t), df))
    if not np.isfinite(logsf):  # underflow far in the tail: asymptotic forms
        if df > 1e5:
            logsf = float(sps.norm.logsf(abs(t)))
        else:  # sf(t) ~ Γ((ν+1)/2) / (Γ(ν/2) √(νπ)) · ν^((ν−1)/2) · t^(−ν)
            nu = df
            logsf = (math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
                     + (nu - 1) / 2 * math.log(nu) - nu * math.log(abs(t)))
    return float(min(1.0, 2.0 * math.exp(logsf))), float(min(0.0, (logsf + math.log(2.0)) / math.log(10.0)))


def welch(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int,
          confidence: float = 0.95) -> WelchResult:
    """Welch's t-test from means, sample variances (ddof=1) and sizes; tests ``mean_a − mean_b``."""
    if n_a < 2 or n_b < 2:
        raise ValueError("Welch's test needs at least 2 samples per group")
    if var_a < 0 or var_b < 0:
        raise ValueError("variances must be non-negative")
    va, vb = var_a / n_a, var_b / n_b
    se2 = va + vb
    se = math.sqrt(se2)
    diff = float(mean_a - mean_b)
    if se2 == 0:
        raise ValueError("both variances are zero: the t statistic is undefined")
    t = diff / se
    df = se2 * se2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))
    p, lp = _t_p(t, df)
    q = float(sps.t.ppf(0.5 + confidence / 2.0, df))
    return WelchResult(t=float(t), df=float(df), p=p, diff=diff, se=se, ci_low=diff - q * se,
                       ci_high=diff + q * se, confidence=confidence, log10_p=lp, mean_a=float(mean_a),
                       mean_b=float(mean_b), rel_diff=diff / mean_b if mean_b else math.nan)


def mean_var_from_sums(n: int, s: float, ss: float) -> tuple[float, float]:
    """(mean, sample variance) from count, Σx and Σx² (fp64; clipped at 0 against rounding)."""
    if n < 2:
        raise ValueError("need n >= 2")
    m = StreamingMoments.from_sums(n, s, ss, name="sums")
    return m.mean, m.var(ddof=1)


def welch_from_sums(n_a: int, sum_a: float, sumsq_a: float, n_b: int, sum_b: float, sumsq_b: float,
                    confidence: float = 0.95) -> WelchResult:
    """Welch's test from streamed sufficient statistics (count, Σx, Σx²) of each group."""
    ma, va = mean_var_from_sums(n_a, sum_a, sumsq_a)
    mb, vb = mean_var_from_sums(n_b, sum_b, sumsq_b)
    return welch(ma, va, n_a, mb, vb, n_b, confidence)


def welch_within(stats_a: Any, stats_b: Any, confidence: float = 0.95) -> WelchResult:
    """Welch test of mean |φ| between two :class:`paperlib.metrics.cooccurrence.WithinStats` (a − b).

    Uses the streamed (Chan) variance rather than Σx² to avoid cancellation."""
    return welch(stats_a.mean_abs_phi, stats_a.var_abs_phi, stats_a.n_pairs,
                 stats_b.mean_abs_phi, stats_b.var_abs_phi, stats_b.n_pairs, confidence)


@dataclass(frozen=True)
class PairedResult:
    """Paired t-test of ``a − b`` (matches ``scipy.stats.ttest_rel(a, b)``)."""

    n: int
    mean_diff: float
    std_diff: float
    se: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    confidence: float
    cohens_d: float  # d_z = mean_diff / std_diff
    frac_positive: float  # fraction of pairs with a > b
    log10_p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
           confidence: float = 0.95) -> PairedResult:
    """Paired t-test on matched samples; NaN pairs (either side) are dropped."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = d.size
    if n < 2:
        raise ValueError("paired test needs at least 2 finite pairs")
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = float(n - 1)
    t = mean / se if se > 0 else (math.copysign(math.inf, mean) if mean else math.nan)
    p, lp = _t_p(t, df)
    q = float(sps.t.ppf(0.5 + confidence / 2.0, df))
    return PairedResult(n=n, mean_diff=mean, std_diff=sd, se=se, t=float(t), df=df, p=p,
                        ci_low=mean - q * se, ci_high=mean + q * se, confidence=confidence,
                        cohens_d=mean / sd if sd > 0 else math.nan,
                        frac_positive=float((d > 0).mean()), log10_p=lp)


def bootstrap_ci(data: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0,
                 batch: int = 1000) -> tuple[float, float, float]:
    """Percentile bootstrap: (estimate on the data, ci_low, ci_high). Deterministic given ``seed``.

    ``statistic`` is applied along axis=-1 of a ``[batch, len(data)]`` resample array when it accepts
    an ``axis`` keyword (numpy reductions), else per resample.
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("data must be a non-empty 1-D array")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for s in range(0, n_boot, batch):
        m = min(batch, n_boot - s)
        idx = rng.integers(0, x.size, size=(m, x.size))
        res = x[idx]
        try:
            out[s:s + m] = statistic(res, axis=-1)  # type: ignore[call-arg]
        except TypeError:
            out[s:s + m] = [statistic(r) for r in res]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(out, [alpha, 1.0 - alpha])
    return float(statistic(x)), float(lo), float(hi)


@dataclass(frozen=True)
class NoiseFloor:
    """Run-to-run spread of a statistic over independent seeds.

    ``std`` (ddof=1) is the seed-to-seed noise; ``spread = max − min``; ``rel_std = std / mean``
    is the reference against which a relative Δ (e.g. −7.5% mean |φ|) should be compared.
    """

    values: tuple[float, ...]
    n: int
    mean: float
    std: float
    sem: float
    spread: float
    rel_std: float
    rel_spread: float

    def z(self, value: float) -> float:
        """How many seed-std's ``value`` lies from the seed mean."""
        return (value - self.mean) / self.std if self.std > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_floor(values: Sequence[float] | np.ndarray) -> NoiseFloor:
    """Mean ± std (and max − min spread) of a statistic across independent solo seeds."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError("noise floor needs at least two seeds")
    mean = float(v.mean())
    std = float(v.std(ddof=1))
    spread = float(v.max() - v.min())
    return NoiseFloor(values=tuple(float(x) for x in v), n=int(v.size), mean=mean, std=std,
                      sem=std / math.sqrt(v.size), spread=spread,
                      rel_std=std / mean if mean else math.nan,
                      rel_spread=spread / mean if mean else math.nan)


# ----------------------------------------------------------------------------------------------
# seed-level comparisons
# ----------------------------------------------------------------------------------------------
__all__ += ["PairedSeedsResult", "min_detectable_effect", "paired_seeds"]


@dataclass(frozen=True)
class PairedSeedsResult(PairedResult):
    """:class:`PairedResult` of Δ = b − a over seeds, plus Δ relative to the mean of ``a``.

    ``rel_diff_pct``/``rel_ci_low_pct``/``rel_ci_high_pct`` = 100 × (Δ, CI) / ``mean_a`` (% of A; the mean
    of A is treated as fixed, so the relative CI is the absolute CI rescaled)."""

    mean_a: float
    mean_b: float
    rel_diff_pct: float
    rel_ci_low_pct: float
    rel_ci_high_pct: float


def paired_seeds(a_by_seed: Sequence[float] | np.ndarray, b_by_seed: Sequence[float] | np.ndarray,
                 confidence: float = 0.95) -> PairedSeedsResult:
    """Paired t-test over K seeds (K − 1 df) of Δ = b − a (units of the inputs), seed k of A matched with
    seed k of B; CI at ``confidence``, and Δ and its CI in % of mean(a). Same t, p and CI as
    ``scipy.stats.ttest_rel(b, a)``. Non-finite values raise (a seed is never silently dropped)."""
    a = _finite_1d("a_by_seed", a_by_seed)
    b = _finite_1d("b_by_seed", b_by_seed)
    if a.shape != b.shape:
        raise ValueError(f"a_by_seed and b_by_seed must have equal length, got {a.size} and {b.size}")
    _finite_1d("confidence", [confidence])
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    r = paired(b, a, confidence=confidence)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    pct = 100.0 / mean_a if mean_a else math.nan
    return PairedSeedsResult(**asdict(r), mean_a=mean_a, mean_b=mean_b, rel_diff_pct=r.mean_diff * pct,
                             rel_ci_low_pct=r.ci_low * pct, rel_ci_high_pct=r.ci_high * pct)


def min_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference (units of ``sd_diff``) that a two-sided paired t-test over ``n``
    pairs detects at level ``alpha`` with probability ``power``: the effect size d_z solved by statsmodels'
    ``TTestPower`` (non-central t), times ``sd_diff`` (the standard deviation of the paired differences)."""
    from statsmodels.stats.power import TTestPower  # lazy: statsmodels adds ~0.8 s to import paperlib

    for name, v in (("sd_diff", sd_diff), ("n", n), ("alpha", alpha), ("power", power)):
        _finite_1d(name, [v])
    if sd_diff < 0:
        raise ValueError("sd_diff must be non-negative")
    if int(n) != n or n < 2:
        raise ValueError("n must be an integer >= 2")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    if not alpha < power < 1.0:
        raise ValueError("power must be in (alpha, 1)")
    d = TTestPower().solve_power(effect_size=None, nobs=int(n), alpha=alpha, power=power,
                                 alternative="two-sided")
    return float(np.asarray(d).reshape(-1)[0]) * float(sd_diff)


def _finite_1d(name: str, x: Any) -> np.ndarray:
    """1-D float64 array; ValueError naming ``name`` if it holds NaN/inf or is not numeric."""
    return finite_array(name, x).reshape(-1)


# ----------------------------------------------------------------------------------------------
# one value against a reference sample, and multiple comparisons
# ----------------------------------------------------------------------------------------------
__all__ += ["PredictionTest", "holm", "prediction_test"]


@dataclass(frozen=True)
class PredictionTest:
    """One new value ``value`` against K reference values: t = (value − mean) / (s·√(1 + 1/K)), K − 1 df,
    two-sided p, and the ``confidence`` prediction interval of a new reference value (``pi_low``, ``pi_high``)."""

    value: float
    n: int
    mean: float
    std: float
    se: float  # s·√(1 + 1/K): the standard deviation of (new value − reference mean)
    t: float
    df: float
    p: float
    pi_low: float
    pi_high: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prediction_test(value: float, reference: Sequence[float] | np.ndarray, confidence: float = 0.95) -> PredictionTest:
    """Is ``value`` (one run, e.g. a grid configuration's mean |φ|) outside the run-to-run spread of the K
    ``reference`` values (e.g. the independent solo seeds' mean |φ|)? Under "value is one more draw from the
    reference distribution" (normal, unknown variance), (value − mean) / (s·√(1 + 1/K)) has a t distribution
    with K − 1 df: the test that belongs to the prediction interval mean ± t₀.₉₇₅,K−1 · s·√(1 + 1/K).
    Two-sided p; p = 0 when s = 0 and value ≠ mean. Non-finite inputs raise."""
    ref = _finite_1d("reference", reference)
    x = float(_finite_1d("value", [value])[0])
    _finite_1d("confidence", [confidence])
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    k = ref.size
    if k < 2:
        raise ValueError(f"reference needs at least 2 values (got {k}): one value has no spread")
    mean = float(ref.mean())
    sd = float(ref.std(ddof=1))
    se = sd * math.sqrt(1.0 + 1.0 / k)
    diff = x - mean
    t = diff / se if se > 0 else (math.copysign(math.inf, diff) if diff else math.nan)
    df = float(k - 1)
    p, _ = _t_p(t, df)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se
    return PredictionTest(value=x, n=k, mean=mean, std=sd, se=se, t=float(t), df=df, p=p, pi_low=mean - half,
                          pi_high=mean + half, confidence=confidence)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of one family of tests (``statsmodels.stats.multitest.multipletests`` with
    ``method="holm"``): sorted ascending, p₍ᵢ₎ · (m − i + 1) (i = 1…m), made monotone by a running maximum
    and capped at 1. Controls the family-wise error rate without assuming independence. NaN entries (tests
    not run) stay NaN and are not counted in m; other non-finite values or values outside [0, 1] raise."""
    from statsmodels.stats.multitest import multipletests  # lazy: see min_detectable_effect

    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    q = p[ok]
    if not (np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()):
        raise ValueError(f"pvalues must lie in [0, 1] (NaN for a test not run), got {q.tolist()}")
    out[ok] = multipletests(q, method="holm")[1]
    return out
