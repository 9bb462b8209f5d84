"""The §5.2 table and the auto-interp figures (paperlib.report.autointerp)."""

import math

import numpy as np
import pandas as pd

from paperlib.metrics.matching import MatchResult
from paperlib.report.autointerp import SUMMARY_COLUMNS, cosine_figure, summary_table

SANITY = {"accuracy": 0.9, "wilson_low": 0.8, "wilson_high": 0.95, "p_value": 1e-5, "n": 40, "judge": "x"}


def test_summary_table_one_row_in_column_order():
    summary = {"solo": "solo", "joint": "joint-l0.3-s1", "n_pairs": 5, "delta": 0.1, "extra": 1}
    t = summary_table(summary, SANITY)
    assert list(t.columns) == SUMMARY_COLUMNS and len(t) == 1
    row = t.iloc[0]
    assert (row["joint"], row["n_pairs"], row["delta"]) == ("joint-l0.3-s1", 5, 0.1)
    assert (row["sanity_acc"], row["sanity_ci_low"], row["sanity_ci_high"], row["sanity_p"], row["sanity_n"]) == \
        (0.9, 0.8, 0.95, 1e-5, 40)
    assert math.isnan(row["t"]) and "extra" not in t  # missing numbers are NaN, unknown keys dropped


def _bar_heights(ax) -> np.ndarray:
    return np.array([p.get_height() for p in ax.patches])


def test_cosine_figure_histogram():
    pairs = pd.DataFrame({"i": [0, 1, 2], "j": [2, 0, 1], "cosine": [0.1, 0.5, 0.9]})
    fig = cosine_figure(MatchResult(pairs, 3, 4, None, None), caption="profile p · model m · layer 3")
    ax = fig.axes[0]
    assert fig._suptitle.get_text() == "Matched alive latent pairs: 3\nprofile p · model m · layer 3"
    assert _bar_heights(ax).sum() == 3 and len(ax.patches) == 50


def _pairs_summary(**changes):
    s = {"arm": "joint", "judge": "j", "explainer": "e", "n_seed_pairs": 5, "n_sampled": 50, "paired_n_pairs": 45,
         "paired_mean_a": 0.6, "paired_mean_b": 0.61, "paired_delta": 0.01, "paired_ci_low": -0.02,
         "paired_ci_high": 0.04, "paired_t": 0.7, "paired_p": 0.5, "paired_sd_diff": 0.1, "paired_mde": 0.043,
         "paired_share_b_higher": 0.5, "retest_n": 24, "retest_pearson_r": 0.6, "retest_pearson_low": 0.27,
         "retest_pearson_high": 0.8, "retest_spearman_rho": 0.55, "retest_spearman_low": 0.2,
         "retest_spearman_high": 0.78, "control_n": 46, "control_real_mean": 0.62, "control_shuffled_mean": 0.51,
         "control_shuffled_low": 0.48, "control_shuffled_high": 0.54, "control_diff": 0.11,
         "control_diff_low": 0.07, "control_diff_high": 0.15, "control_diff_p": 1e-5, "control_at_chance": True,
         "control_real_above": True, "unscored_unscored_a": 2, "unscored_unscored_b": 3, "unscored_fisher_p": 1.0,
         "how": "measured 1 s per feature"}
    return {**s, **changes}


def test_pairs_summary_table_and_words_follow_the_numbers():
    from paperlib.report.autointerp import PAIRS_COLUMNS, describe, pairs_summary_table

    t = pairs_summary_table(_pairs_summary())
    assert list(t.columns) == PAIRS_COLUMNS and t.iloc[0]["delta"] == 0.01 and t.iloc[0]["pct_joint_higher"] == 50
    words = " ".join(describe(_pairs_summary()))
    assert "no evidence of a difference (the CI covers 0)" in words and "sits at chance" in words
    assert "clearly above it" in words and "0.0430 AUROC" in words and "similar rates" in words
    words = " ".join(describe(_pairs_summary(paired_ci_low=0.01, control_at_chance=False, control_real_above=False,
                                             unscored_fisher_p=0.01)))
    assert "evidence that joint is higher" in words and "is NOT at chance" in words
    assert "NOT clearly above it" in words and "different rates" in words
    assert "not measured" in " ".join(describe(_pairs_summary(control_n=0)))
