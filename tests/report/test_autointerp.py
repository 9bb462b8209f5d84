"""The §5.2 table and the auto-interp figures (paperlib.report.autointerp)."""

import math

import numpy as np
import pandas as pd
import pytest

from paperlib.metrics.matching import MatchResult
from paperlib.report.autointerp import SUMMARY_COLUMNS, cosine_figure, fuzz_density_figure, summary_table

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


def test_fuzz_density_figure_against_hand_counts():
    third = 1 / 3
    per = pd.DataFrame({"fuzz_solo": [-1, -third, -third, third, 1, np.nan],
                        "fuzz_joint": [1, 1, third, third, -1, 1]})
    fig = fuzz_density_figure(per)
    left, right = fig.axes
    # bins of width 1/3 centred on −1, −2/3, …, 1 (seven per side); the pair with no solo score is dropped
    solo = np.array([1, 0, 2, 0, 1, 0, 1]) / (5 * third)
    joint = np.array([1, 0, 0, 0, 2, 0, 2]) / (5 * third)
    heights = _bar_heights(left)
    np.testing.assert_allclose(heights[:7], solo, atol=1e-12)
    np.testing.assert_allclose(heights[7:], joint, atol=1e-12)
    np.testing.assert_allclose(_bar_heights(right), joint - solo, atol=1e-12)
    assert left.get_title() == "fuzz scores, 5 pairs"
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["solo (mean -0.067)", "joint (mean 0.333)"]


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_fuzz_density_figure_without_scored_pairs():
    fig = fuzz_density_figure(pd.DataFrame({"fuzz_solo": [np.nan], "fuzz_joint": [0.5]}))
    assert fig.axes[0].get_title() == "fuzz scores, 0 pairs"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["solo", "joint"]


def test_cosine_figure_histogram():
    pairs = pd.DataFrame({"i": [0, 1, 2], "j": [2, 0, 1], "cosine": [0.1, 0.5, 0.9]})
    fig = cosine_figure(MatchResult(pairs, 3, 4, None, None))
    ax = fig.axes[0]
    assert ax.get_title() == "3 matched alive pairs"
    assert _bar_heights(ax).sum() == 3 and len(ax.patches) == 50
