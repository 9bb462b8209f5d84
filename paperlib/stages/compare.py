"""The primary comparison: paired seeds, rate-robust |φ| statistics, a rate-matched estimate, a verdict.

The unit of replication is the training seed (docs/method.md §7): solo seed s, joint seed s and
random-critic seed s share the primary SAE's initialisation and the order of the training batches, so
each seed gives one paired difference per statistic, and the test is a paired t-test over the K seeds
(K − 1 degrees of freedom). Pairs of latents are *not* independent samples; the Welch test over pairs in
Table 1 only describes the precision of one SAE's mean.

Comparisons: joint vs solo (does the penalty change the statistic?), random critic vs solo (does a
penalty against an untrained critic — generic decoder repulsion — change it?), joint vs random critic
(does training the critic matter beyond that?). The verdict words are computed from the confidence
intervals, never written in advance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from paperlib.config.profiles import Profile, get_profile
from paperlib.metrics.convergence import convergence
from paperlib.metrics.cooccurrence import SparseFiring, pooled_rate_regression, rate_matched_delta
from paperlib.metrics.stats import min_detectable_effect, paired, paired_seeds
from paperlib.sae.arms import primary_runs
from paperlib.stages.cooccur import ALIVE_MIN_COUNT, ensure_cooccurrence, load_firing
from paperlib.stages.recon import ensure_reconstruction
from paperlib.stages.run import Run
from paperlib.stages.train import read_metrics

STATISTICS: dict[str, str] = {
    "mean_abs_phi": "mean |φ|, all pairs (the paper's statistic)",
    "mean_abs_phi_alive": f"mean |φ|, alive pairs (both latents fire ≥ {ALIVE_MIN_COUNT} times)",
    "excess_abs_phi": "excess mean |φ| over independent firing (|φ| − E₀|φ|)",
    "frac_phi_gt_tail": "share of pairs with φ > 0.1 (positive tail)",
    "mean_phi_expected5": "mean φ over pairs with ≥ 5 expected co-firings",
}
"""The per-SAE statistics tested over seeds; for each, lower means fewer co-firing (more atomic) latents."""

COMPARISONS = (("solo", "joint"), ("solo", "randcritic"), ("randcritic", "joint"))
"""(baseline, treatment) pairs; Δ = treatment − baseline."""


def run_statistics(run: Run, *, progress: bool = False) -> dict[str, float]:
    """The :data:`STATISTICS` of one run (from its co-occurrence stage), plus dead-latent counts."""
    co = ensure_cooccurrence(run, progress=progress)
    rb = co.robust
    return {"mean_abs_phi": co.all.mean_abs_phi, "mean_abs_phi_alive": rb.mean_abs_phi_alive,
            "excess_abs_phi": rb.excess_abs_phi, "frac_phi_gt_tail": rb.frac_phi_gt_tail,
            "mean_phi_expected5": rb.mean_phi_expected5, "n_alive": rb.n_alive, "n_dead": co.all.n_dead}


def verdict(ci_low: float, ci_high: float, delta: float) -> str:
    """Words for a paired difference from its 95% CI: which direction, or no evidence."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not testable"
    if ci_low > 0:
        return "higher (95% CI excludes 0)"
    if ci_high < 0:
        return "lower (95% CI excludes 0)"
    return "no evidence of a difference (95% CI covers 0)"


def mde_or_nan(sd_diff: float, n: int) -> float:
    """:func:`paperlib.metrics.stats.min_detectable_effect` at 80% power and α = 0.05 (units of ``sd_diff``);
    NaN when it is undefined (fewer than 2 seeds, or paired differences without spread)."""
    if n < 2 or not math.isfinite(sd_diff) or sd_diff <= 0:
        return math.nan
    return min_detectable_effect(sd_diff, n)


def _arm_values(runs: dict[str, list[Run]], progress: bool) -> dict[str, list[dict[str, float]]]:
    return {arm: [run_statistics(r, progress=progress) for r in rs] for arm, rs in runs.items()}


def primary_run_handles(profile: str | Profile) -> dict[str, list[Run]]:
    p = get_profile(profile)
    return {arm: [Run(p, s) for s in specs] for arm, specs in primary_runs(p).items()}


def paired_seed_table(profile: str | Profile, *, progress: bool = False) -> pd.DataFrame:
    """One row per (comparison, statistic): K, the arm means, Δ with its 95% CI and p (paired t over
    seeds), Δ in % of the baseline mean with its CI, the minimum detectable |Δ| at 80% power, the SD of
    the paired differences, and the verdict words."""
    runs = primary_run_handles(profile)
    vals = _arm_values(runs, progress)
    rows = []
    for base, treat in COMPARISONS:
        if base not in vals or treat not in vals:
            continue
        for stat, label in STATISTICS.items():
            a = [v[stat] for v in vals[base]]
            b = [v[stat] for v in vals[treat]]
            row: dict[str, Any] = {"comparison": f"{treat} vs {base}", "statistic": stat, "label": label,
                                   "K": len(a), "unit": "training seed (paired: same init and data order)",
                                   "mean_baseline": float(np.mean(a)) if a else math.nan,
                                   "mean_treatment": float(np.mean(b)) if b else math.nan}
            if len(a) >= 2:
                r = paired_seeds(a, b)
                row.update(delta=r.mean_diff, ci_low=r.ci_low, ci_high=r.ci_high, t=r.t, df=r.df, p=r.p,
                           delta_pct=r.rel_diff_pct, ci_low_pct=r.rel_ci_low_pct, ci_high_pct=r.rel_ci_high_pct,
                           sd_diff=r.std_diff, mde=mde_or_nan(r.std_diff, r.n))
                row["mde_pct"] = 100.0 * row["mde"] / abs(row["mean_baseline"]) if row["mean_baseline"] else math.nan
                row["verdict"] = verdict(r.ci_low, r.ci_high, r.mean_diff)
            else:
                row.update(delta=float(np.mean(b) - np.mean(a)) if a and b else math.nan,
                           verdict="not testable (K < 2)")
            rows.append(row)
    return pd.DataFrame(rows)


def rate_matched_table(profile: str | Profile, treatment: str = "joint", baseline: str = "solo", *,
                       progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Firing-rate-matched difference of latent-level mean |φ| (treatment − baseline) per seed (OLS of a
    latent's mean |φ| over alive partners on arm and log firing rate, HC3 errors), and the mean over
    seeds with a t confidence interval across seeds (the seed is the unit), the SD of the per-seed
    differences (``sd_diff_pct``) and the minimum detectable |Δ| at 80% power (``mde_pct``, in % like Δ); and one
    regression pooled over the seeds (a fixed effect per seed pair, errors clustered by pair: ``pooled_*``,
    :func:`~paperlib.metrics.cooccurrence.pooled_rate_regression`)."""
    runs = primary_run_handles(profile)
    rows, latents = [], []
    for ra, rb in zip(runs.get(baseline, []), runs.get(treatment, []), strict=True):
        fa, fb = SparseFiring.from_fired(load_firing(ra)), SparseFiring.from_fired(load_firing(rb))
        r = rate_matched_delta(fa, fb, min_count=ALIVE_MIN_COUNT)
        latents.append(r["latents"])
        rows.append({"seed": ra.spec.seed, "rel_diff_pct": r["rel_diff_pct"], "rel_ci_low_pct": r["rel_ci_low_pct"],
                     "rel_ci_high_pct": r["rel_ci_high_pct"], "raw_rel_pct": r["raw_rel_pct"],
                     "cell_rel_pct": r["cell_rel_pct"], "n_alive_baseline": r["n_a"], "n_alive_treatment": r["n_b"]})
    df = pd.DataFrame(rows)
    summary: dict[str, Any] = {"comparison": f"{treatment} vs {baseline}", "K": len(df)}
    if len(df) >= 2:
        r = paired(df["rel_diff_pct"].to_numpy(), np.zeros(len(df)))
        summary.update(mean_rel_diff_pct=r.mean_diff, ci_low_pct=r.ci_low, ci_high_pct=r.ci_high, p=r.p,
                       sd_diff_pct=r.std_diff, mde_pct=mde_or_nan(r.std_diff, r.n),
                       verdict=verdict(r.ci_low, r.ci_high, r.mean_diff))
        pooled = pooled_rate_regression(latents)
        summary.update({f"pooled_{k}": pooled[k] for k in ("rel_pct", "rel_ci_low_pct", "rel_ci_high_pct", "p_arm",
                                                            "df", "n_groups", "n_latents")})
    elif len(df) == 1:
        summary.update(mean_rel_diff_pct=float(df["rel_diff_pct"].iloc[0]), verdict="not testable (K < 2)")
    return df, summary


def convergence_table(runs: list[Run]) -> pd.DataFrame:
    """Convergence diagnostics of every run (:func:`paperlib.metrics.convergence.convergence`); dead
    latents are counted on the co-occurrence tokens with the calibrated thresholds."""
    rows = []
    for run in runs:
        rec = ensure_reconstruction(run, progress=False)
        c = convergence(read_metrics(run), run.profile.sae.n_latents, rec.n_dead,
                        trains_meta=run.spec.arm_def.trains_meta)
        rows.append({"run": run.name, "arm": run.arm, "seed": run.spec.seed, "dead_on_tokens": rec.firing_n_tokens,
                     **c})
    return pd.DataFrame(rows)


def overall_verdict(table: pd.DataFrame) -> str:
    """One sentence on the paper's question, computed from the joint-vs-solo and joint-vs-random-critic
    rows of the rate-robust statistics."""
    if table.empty or "verdict" not in table:
        return "The primary comparison has not run."
    js = table[table["comparison"] == "joint vs solo"].set_index("statistic")
    if js.empty or "ci_low" not in js:
        return "The primary comparison needs at least two paired seeds."
    robust = ["mean_abs_phi_alive", "excess_abs_phi"]
    lower = [s for s in robust if s in js.index and js.loc[s, "ci_high"] < 0]
    higher = [s for s in robust if s in js.index and js.loc[s, "ci_low"] > 0]
    k = int(js["K"].iloc[0])
    if len(lower) == len(robust):
        jr = table[table["comparison"] == "joint vs randcritic"].set_index("statistic")
        beyond = [s for s in robust if s in jr.index and "ci_high" in jr and jr.loc[s, "ci_high"] < 0]
        tail = ("; it also exceeds what a random critic does" if len(beyond) == len(robust) else
                "; but a random critic is not clearly worse, so generic decoder repulsion may explain it")
        against = [s for s in js.index if s not in robust and js.loc[s, "ci_low"] > 0]
        if against:
            tail += (f"; but {', '.join(against)} rises (95% CI excludes 0), so the strongly co-firing pairs do not "
                     "become rarer")
        return (f"Evidence that the penalty lowers co-firing at this scale: over {k} paired seeds the 95% CIs of "
                f"the rate-robust statistics ({', '.join(robust)}) exclude 0{tail}.")
    if higher:
        return (f"The penalty raised {', '.join(higher)} over {k} paired seeds (95% CI excludes 0): "
                "no support for more atomic latents at this scale.")
    return (f"No evidence at this scale: over {k} paired seeds the 95% CIs of the rate-robust statistics "
            "cover 0 (see the minimum detectable effects).")
