"""The §5.2 auto-interp table and figures (docs/method.md §3.6; paper Fig. 2).

Renders the results of :mod:`paperlib.stages.interp` (matching, per-pair scores, summary, judge
sanity check).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.metrics.matching import MatchResult
from paperlib.report.figures import add_caption, arm_color, styled

__all__ = ["PAIRS_COLUMNS", "SUMMARY_COLUMNS", "cosine_figure", "describe",
           "pairs_summary_table",
           "summary_table"]

SUMMARY_COLUMNS = ["solo", "joint", "n_pairs", "mean_solo", "mean_joint", "delta", "delta_pct",
                   "t", "p", "ci_low", "ci_high", "pct_joint_higher", "judge", "sanity_acc",
                   "sanity_ci_low", "sanity_ci_high", "sanity_p", "sanity_n", "n_sampled",
                   "n_missing_solo", "n_missing_joint", "sanity_n_missing", "pct_equal", "sec_per_feature"]
"""Columns of :func:`summary_table`, in order."""


def summary_table(summary: dict, sanity: dict) -> pd.DataFrame:
    """One-row §5.2 table (``tables/autointerp_summary``): the summary of
    :func:`paperlib.stages.interp.compare_runs` beside the judge's sanity result. ``n_missing_solo`` /
    ``n_missing_joint`` / ``sanity_n_missing`` count the features and trials the judge left unanswered
    (missing, never scored as wrong)."""
    row = {**summary, "sanity_acc": sanity["accuracy"], "sanity_ci_low": sanity["wilson_low"],
           "sanity_ci_high": sanity["wilson_high"], "sanity_p": sanity["p_value"],
           "sanity_n": sanity["n"], "sanity_n_missing": sanity.get("n_missing", 0)}
    return pd.DataFrame([{c: row.get(c, np.nan) for c in SUMMARY_COLUMNS}])


@styled
def cosine_figure(match: MatchResult, *, caption: str | None = None) -> plt.Figure:
    """Histogram of the matched pairs' decoder cosine similarities."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.hist(match.pairs["cosine"], bins=50, color=arm_color("joint"))
    ax.set(xlabel="decoder cosine (solo ↔ joint)", ylabel="pairs")
    add_caption(fig, caption, f"Matched alive latent pairs: {match.n_pairs}")
    fig.tight_layout()
    return fig


PAIRS_COLUMNS = ["arm", "judge", "explainer", "n_seed_pairs", "n_sampled", "n_pairs", "mean_solo", "mean_joint",
                 "delta", "ci_low", "ci_high", "t", "p", "sd_diff", "mde", "pct_joint_higher", "retest_n",
                 "retest_r", "retest_low", "retest_high", "retest_rho", "retest_rho_low", "retest_rho_high",
                 "control_n", "real_mean", "shuffled_mean", "shuffled_low", "shuffled_high", "control_diff",
                 "control_diff_low", "control_diff_high", "control_p", "at_chance", "real_above", "unscored_solo",
                 "unscored_joint", "unscored_fisher_p", "n_missing_solo", "n_missing_joint", "n_retest_planned",
                 "n_shuffled_planned", "sec_feature", "sec_per_pair", "budget_s", "sec_scoring", "design"]
"""Columns of :func:`pairs_summary_table` (``tables/autointerp_summary``); scores are fuzz AUROCs (chance 0.5)."""

_RENAME = {"paired_n_pairs": "n_pairs", "paired_mean_a": "mean_solo", "paired_mean_b": "mean_joint",
           "paired_delta": "delta", "paired_ci_low": "ci_low", "paired_ci_high": "ci_high", "paired_t": "t",
           "paired_p": "p", "paired_sd_diff": "sd_diff", "paired_mde": "mde", "retest_n": "retest_n",
           "retest_pearson_r": "retest_r", "retest_pearson_low": "retest_low", "retest_pearson_high": "retest_high",
           "retest_spearman_rho": "retest_rho", "retest_spearman_low": "retest_rho_low",
           "retest_spearman_high": "retest_rho_high", "control_n": "control_n", "control_real_mean": "real_mean",
           "control_shuffled_mean": "shuffled_mean", "control_shuffled_low": "shuffled_low",
           "control_shuffled_high": "shuffled_high", "control_diff": "control_diff",
           "control_diff_low": "control_diff_low", "control_diff_high": "control_diff_high",
           "control_diff_p": "control_p", "control_at_chance": "at_chance", "control_real_above": "real_above",
           "unscored_unscored_a": "unscored_solo", "unscored_unscored_b": "unscored_joint",
           "unscored_fisher_p": "unscored_fisher_p", "n_retest": "n_retest_planned",
           "n_shuffled": "n_shuffled_planned", "how": "design"}


def pairs_summary_table(summary: dict) -> pd.DataFrame:
    """One-row table of :func:`paperlib.stages.interp.compare_seed_pairs`'s summary, in :data:`PAIRS_COLUMNS`."""
    row = {_RENAME.get(k, k): v for k, v in summary.items()}
    share = summary.get("paired_share_b_higher", np.nan)
    row["pct_joint_higher"] = 100 * share if share is not None else np.nan
    return pd.DataFrame([{c: row.get(c, np.nan) for c in PAIRS_COLUMNS}])


def _ci_words(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no CI (too few pairs)"
    if lo <= 0 <= hi:
        return "no evidence of a difference (the CI covers 0)"
    return f"evidence that joint is {'higher' if lo > 0 else 'lower'} (the CI excludes 0)"


def describe(summary: dict) -> list[str]:
    """Sentences read off the numbers of a :func:`paperlib.stages.interp.compare_seed_pairs` summary."""
    t = pairs_summary_table(summary).iloc[0]
    out = []
    chance = "sits at chance" if t["at_chance"] else "is NOT at chance"
    above = "clearly above it" if t["real_above"] else "NOT clearly above it"
    if not t["control_n"] >= 2:
        out.append(f"Judge check not measured: {t['control_n']} features got a shuffled explanation (need 2).")
    else:
            out.append(f"Judge check (shuffled explanations, {t['control_n']} features): shuffled AUROC "
                   f"{t['shuffled_mean']:.3f} [95% CI {t['shuffled_low']:.3f}, {t['shuffled_high']:.3f}] {chance}; "
                   f"real explanations {t['real_mean']:.3f}, {above} (real − shuffled {t['control_diff']:+.3f} "
                   f"[{t['control_diff_low']:+.3f}, {t['control_diff_high']:+.3f}], p = {t['control_p']:.2g}).")
    out.append(f"Test–retest reliability over {t['retest_n']} features scored twice on disjoint windows: Pearson r = "
               f"{t['retest_r']:.2f} [95% CI {t['retest_low']:.2f}, {t['retest_high']:.2f}], Spearman ρ = "
               f"{t['retest_rho']:.2f} [{t['retest_rho_low']:.2f}, {t['retest_rho_high']:.2f}].")
    out.append(f"Paired Δ AUROC (joint − solo) over {t['n_pairs']} matched pairs from {t['n_seed_pairs']} seed "
               f"pairs: {t['delta']:+.4f} [95% CI {t['ci_low']:+.4f}, {t['ci_high']:+.4f}], p = {t['p']:.2g}: "
               f"{_ci_words(t['ci_low'], t['ci_high'])}. Minimum detectable effect at 80% power: "
               f"{t['mde']:.4f} AUROC (paper's +0.0175 on the 2·acc − 1 scale ≈ +0.009 AUROC).")
    rel = "similar" if not t["unscored_fisher_p"] < 0.05 else "different"
    out.append(f"Unscored pairs: solo {t['unscored_solo']}, joint {t['unscored_joint']} of {t['n_sampled']} "
               f"sampled; Fisher's exact p = {t['unscored_fisher_p']:.2g} ({rel} rates).")
    out.append(f"Design: {t['design']}.")
    return out
