"""The §5.2 auto-interp table and figures (docs/method.md §3.6; paper Fig. 2).

Renders the results of :mod:`paperlib.stages.interp` (matching, per-pair scores, summary, judge
sanity check).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paperlib.metrics.matching import MatchResult

__all__ = ["SUMMARY_COLUMNS", "cosine_figure", "fuzz_density_figure", "summary_table"]

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


def fuzz_density_figure(per: pd.DataFrame, bin_width: float = 1 / 3) -> plt.Figure:
    """Paper Fig. 2: density of fuzz scores joint − solo over matched pairs, plus both histograms.

    Histogram densities on bins of ``bin_width`` centred on multiples of it (the lean setting's
    scores are multiples of 1/3), over pairs where both sides have a score.
    """
    ok = per["fuzz_solo"].notna() & per["fuzz_joint"].notna()
    a, b = per.loc[ok, "fuzz_solo"].to_numpy(float), per.loc[ok, "fuzz_joint"].to_numpy(float)
    half = bin_width / 2
    edges = np.arange(-1 - half, 1 + half + 1e-9, bin_width)
    da, _ = np.histogram(a, edges, density=True)
    db, _ = np.histogram(b, edges, density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].bar(centres - bin_width * 0.2, da, width=bin_width * 0.4, label=f"solo (mean {a.mean():.3f})"
              if len(a) else "solo")
    ax[0].bar(centres + bin_width * 0.2, db, width=bin_width * 0.4, label=f"joint (mean {b.mean():.3f})"
              if len(b) else "joint")
    ax[0].set(xlabel="fuzz score (2·acc − 1)", ylabel="density", title=f"fuzz scores, {len(a)} pairs")
    ax[0].legend()
    diff = db - da
    ax[1].bar(centres, diff, width=bin_width * 0.9, color=np.where(diff >= 0, "tab:green", "tab:red"))
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set(xlabel="fuzz score (2·acc − 1)", ylabel="density joint − solo",
              title="Fig. 2: density difference (joint − solo)")
    fig.tight_layout()
    return fig


def cosine_figure(match: MatchResult) -> plt.Figure:
    """Histogram of the matched pairs' decoder cosine similarities."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(match.pairs["cosine"], bins=50)
    ax.set(xlabel="decoder cosine (solo ↔ joint)", ylabel="pairs",
           title=f"{match.n_pairs} matched alive pairs")
    fig.tight_layout()
    return fig
