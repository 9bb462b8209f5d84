"""How much a fuzz score can be trusted: AUROC, test–retest reliability, the shuffled-explanation
control, missingness and the power of the paired comparison (docs/method.md §3.6).

* :func:`auroc` — the per-feature score: the probability that the judge ranks a correctly highlighted
  item above a randomly highlighted one (ties count half; Mann–Whitney U / (n₊·n₋)).
* :func:`retest_reliability` — Pearson and Spearman r between two scores of the same features on disjoint
  context samples, each with a Fisher-z confidence interval.
* :func:`shuffled_control` — real explanations against another feature's explanation on the same items:
  the shuffled AUROC must sit at chance (0.5) and the real one clearly above it.
* :func:`unscored_rates` — features left without a score per side, compared by Fisher's exact test.
* :func:`paired_power` — Δ (b − a) with its CI and p (paired t-test) and the minimum detectable effect
  at 80% power for the number of pairs (statsmodels' ``TTestPower``).
* :func:`plan_design` — how many pairs fit a time budget at a measured cost per feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from paperlib.metrics.stats import min_detectable_effect, paired

CHANCE = 0.5
"""AUROC of a judge whose ranking ignores the explanation."""


def _finite(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values ({int((~np.isfinite(a)).sum())} of {a.size})")
    return a


def _confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie); NaN when a class is absent.
    Non-finite scores raise."""
    lab = np.asarray(labels, dtype=bool).reshape(-1)
    s = _finite("scores", scores)
    if lab.shape != s.shape:
        raise ValueError(f"labels ({lab.size}) and scores ({s.size}) differ in length")
    if lab.all() or not lab.any():
        return float("nan")
    u = sps.mannwhitneyu(s[lab], s[~lab], alternative="two-sided").statistic
    return float(u / (lab.sum() * (~lab).sum()))


def fisher_ci(r: float, n: int, confidence: float = 0.95, se_scale: float = 1.0) -> tuple[float, float]:
    """CI of a correlation from the Fisher z transform: tanh(atanh r ± z·se_scale/√(n − 3))."""
    z = _confidence(confidence)
    if n < 4 or not math.isfinite(r):
        return float("nan"), float("nan")
    r = min(max(r, -1 + 1e-12), 1 - 1e-12)
    half = z * se_scale / math.sqrt(n - 3)
    return float(math.tanh(math.atanh(r) - half)), float(math.tanh(math.atanh(r) + half))


def retest_reliability(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> dict:
    """Reliability of a score measured twice on the same features (disjoint samples): Pearson r with its
    Fisher-z CI and Spearman ρ with the Bonett–Wright Fisher-z CI (SE √((1 + ρ²/2)/(n − 3)))."""
    a, b = _finite("first", first), _finite("second", second)
    if a.shape != b.shape:
        raise ValueError(f"first ({a.size}) and second ({b.size}) differ in length")
    n = int(a.size)
    out = {"n": n, "confidence": confidence}
    if n < 4 or a.std() == 0 or b.std() == 0:
        nan = float("nan")
        return {**out, "pearson_r": nan, "pearson_low": nan, "pearson_high": nan, "pearson_p": nan,
                "spearman_rho": nan, "spearman_low": nan, "spearman_high": nan}
    r, p = sps.pearsonr(a, b)
    rho = float(sps.spearmanr(a, b).statistic)
    lo, hi = fisher_ci(float(r), n, confidence)
    slo, shi = fisher_ci(rho, n, confidence, se_scale=math.sqrt(1 + rho**2 / 2))
    return {**out, "pearson_r": float(r), "pearson_low": lo, "pearson_high": hi, "pearson_p": float(p),
            "spearman_rho": rho, "spearman_low": slo, "spearman_high": shi}


def _mean_ci(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    n = x.size
    m = float(x.mean()) if n else float("nan")
    if n < 2:
        return m, float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half


def shuffled_control(real: Sequence[float], shuffled: Sequence[float], confidence: float = 0.95) -> dict:
    """Real-explanation AUROCs against shuffled-explanation AUROCs of the same features on the same items.

    Returns each mean with its t CI, the one-sample t-tests against 0.5 (two-sided), the paired test of
    real − shuffled (:func:`paperlib.metrics.stats.paired`), and ``at_chance`` (the shuffled CI covers 0.5)
    and ``real_above`` (the paired CI lies above 0)."""
    a, b = _finite("real", real), _finite("shuffled", shuffled)
    if a.shape != b.shape:
        raise ValueError(f"real ({a.size}) and shuffled ({b.size}) differ in length")
    _confidence(confidence)
    out: dict = {"n": int(a.size), "confidence": confidence}
    for name, x in (("real", a), ("shuffled", b)):
        m, lo, hi = _mean_ci(x, confidence)
        p = float(sps.ttest_1samp(x, CHANCE).pvalue) if x.size >= 2 and x.std() > 0 else float("nan")
        out.update({f"{name}_mean": m, f"{name}_low": lo, f"{name}_high": hi, f"{name}_p_vs_chance": p})
    if a.size >= 2 and np.std(a - b) > 0:
        t = paired(a, b, confidence)
        out.update(diff=t.mean_diff, diff_low=t.ci_low, diff_high=t.ci_high, diff_p=t.p)
    else:
        out.update(diff=float(np.mean(a - b)) if a.size else float("nan"), diff_low=float("nan"),
                   diff_high=float("nan"), diff_p=float("nan"))
    out["at_chance"] = bool(out["shuffled_low"] <= CHANCE <= out["shuffled_high"])
    out["real_above"] = bool(out["diff_low"] > 0)
    return out


def unscored_rates(n_unscored_a: int, n_unscored_b: int, n_a: int, n_b: int | None = None) -> dict:
    """Unscored features per side (a, b) out of ``n_a`` / ``n_b`` sampled, and Fisher's exact test
    (two-sided) of equal rates."""
    n_b = n_a if n_b is None else n_b
    for name, v in (("n_unscored_a", n_unscored_a), ("n_unscored_b", n_unscored_b), ("n_a", n_a), ("n_b", n_b)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if n_unscored_a > n_a or n_unscored_b > n_b:
        raise ValueError("more unscored features than sampled")
    table = [[n_unscored_a, n_a - n_unscored_a], [n_unscored_b, n_b - n_unscored_b]]
    p = float(sps.fisher_exact(table).pvalue) if n_a and n_b else float("nan")
    return {"unscored_a": int(n_unscored_a), "unscored_b": int(n_unscored_b), "n_a": int(n_a), "n_b": int(n_b),
            "rate_a": n_unscored_a / n_a if n_a else float("nan"),
            "rate_b": n_unscored_b / n_b if n_b else float("nan"), "fisher_p": p}


def paired_power(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, power: float = 0.8) -> dict:
    """Δ = mean(b − a) over pairs with its CI and p (paired t-test, = ``scipy.stats.ttest_rel(b, a)``), the
    SD of the differences and the minimum detectable effect at ``power`` (two-sided, α = 1 − confidence)
    for this number of pairs."""
    va, vb = _finite("a", a), _finite("b", b)
    if va.shape != vb.shape:
        raise ValueError(f"a ({va.size}) and b ({vb.size}) differ in length")
    n = int(va.size)
    nan = float("nan")
    if n < 2 or np.std(vb - va) == 0:
        d = float(np.mean(vb - va)) if n else nan
        return {"n_pairs": n, "delta": d, "ci_low": nan, "ci_high": nan, "t": nan, "p": nan, "sd_diff": nan,
                "mde": nan, "power": power, "mean_a": float(va.mean()) if n else nan,
                "mean_b": float(vb.mean()) if n else nan, "share_b_higher": nan}
    t = paired(vb, va, confidence)
    return {"n_pairs": n, "delta": t.mean_diff, "ci_low": t.ci_low, "ci_high": t.ci_high, "t": t.t, "p": t.p,
            "sd_diff": t.std_diff, "mde": min_detectable_effect(t.std_diff, n, 1 - confidence, power),
            "power": power, "mean_a": float(va.mean()), "mean_b": float(vb.mean()),
            "share_b_higher": float((vb > va).mean())}


@dataclass(frozen=True)
class Design:
    """How many matched pairs (both sides scored) fit a budget, and how many of them are retested and get
    the shuffled control. ``sec_per_pair`` = 2·(1 + retest_share)·sec_feature + 2·shuffled_share·sec_shuffled."""

    n_pairs: int
    n_retest: int
    n_shuffled: int
    sec_feature: float
    sec_shuffled: float
    sec_per_pair: float
    budget_s: float
    retest_share: float
    shuffled_share: float

    def to_dict(self) -> dict:
        return asdict(self)


def plan_design(sec_feature: float, sec_shuffled: float, budget_s: float, *, retest_share: float = 0.25,
                shuffled_share: float = 0.5, min_pairs: int = 4, max_pairs: int | None = None) -> Design:
    """Largest number of pairs whose scoring (both sides, plus the retest and shuffled shares) fits
    ``budget_s`` at the measured costs: ``floor(budget_s / sec_per_pair)``, at least ``min_pairs`` and at
    most ``max_pairs``. For a fixed budget the paired test's power only grows with the number of pairs, so
    the budget goes to pairs once the items per feature are fixed."""
    for name, v in (("sec_feature", sec_feature), ("sec_shuffled", sec_shuffled), ("budget_s", budget_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    for name, v in (("retest_share", retest_share), ("shuffled_share", shuffled_share)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    if min_pairs < 1 or (max_pairs is not None and max_pairs < min_pairs):
        raise ValueError(f"need 1 <= min_pairs <= max_pairs, got {min_pairs!r}, {max_pairs!r}")
    per = 2 * (1 + retest_share) * sec_feature + 2 * shuffled_share * sec_shuffled
    n = int(budget_s // per) if per > 0 else (max_pairs or min_pairs)
    n = max(min_pairs, n if max_pairs is None else min(n, max_pairs))
    return Design(n_pairs=n, n_retest=int(math.ceil(retest_share * n)), n_shuffled=int(math.ceil(shuffled_share * n)),
                  sec_feature=float(sec_feature), sec_shuffled=float(sec_shuffled), sec_per_pair=float(per),
                  budget_s=float(budget_s), retest_share=retest_share, shuffled_share=shuffled_share)
