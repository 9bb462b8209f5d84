"""Fuzz items, balanced accuracy, the scorers on a hand-built judge, and the paired comparison."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from paperlib.autointerp.contexts import Example
from paperlib.autointerp.scoring import (
    balanced_accuracy,
    make_fuzz_items,
    paired_comparison,
    random_highlight,
    score_features,
)
from tests.autointerp.test_contexts import IdentitySAE, corpus, decode


def test_random_highlight_count_and_never_true():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 10))
        mask = list(rng.random(n) < 0.4)
        k = sum(mask)
        hl = random_highlight(mask, rng)
        if k == 0 or k == n:
            assert hl is None
            continue
        assert sum(hl) == k and hl != mask
    assert random_highlight([True, False], rng) == [False, True]


def test_make_fuzz_items_balanced():
    exs = [Example(0, 0, 4, [1, 2, 3, 4], [0, 1.0, 0, 0], "quantile") for _ in range(9)]
    exs.append(Example(0, 0, 2, [1, 2], [1.0, 1.0], "quantile"))  # all active: not fuzzable
    items = make_fuzz_items(exs, seed=1)
    assert len(items) == 18 and sum(i.correct for i in items) == 9  # each window true once, fuzzed once
    for it in items:
        true = exs[it.example].active_mask()
        assert sum(it.highlight) == sum(true)
        assert (it.highlight == true) == it.correct
    assert 9 not in {i.example for i in items}


def test_balanced_accuracy_hand_computed():
    labels = [True, True, True, False]
    assert balanced_accuracy(labels, [True, True, False, False]) == pytest.approx(0.5 * (2 / 3 + 1))
    assert np.isnan(balanced_accuracy(labels, [True, None, True, False]))  # missing, not wrong
    assert np.isnan(balanced_accuracy([True], [True]))


class CatJudge:
    """Says 'correct' iff every highlighted token is ' cat'; detection iff the text has ' cat'."""

    name = "cat-judge"

    def __init__(self, invert=False):
        self.invert = invert
        self.calls = 0
        self.stats = {}

    def explain(self, items):
        self.calls += 1
        return "the word cat"

    def judge_binary(self, explanation, items, task, n_positive=None):
        self.calls += 1
        out = []
        for it in items:
            if task == "fuzz":
                ok = all(t == " cat" for t, h in zip(it.tokens, it.highlight, strict=True) if h)
            else:
                ok = " cat" in it.tokens
            out.append(ok != self.invert)
        return out

    def predict_activations(self, explanation, items):
        self.calls += 1
        return [[float(t == " cat") for t in it.tokens] for it in items]

    def pick(self, explanation, texts):
        return 0


@pytest.mark.parametrize("invert,expected,workers", [(False, 1.0, 1), (True, -1.0, 2)])
def test_score_features_with_hand_built_judge(tmp_path, invert, expected, workers):
    tok, pos, acts, vals = corpus()
    judge = CatJudge(invert)
    kw = dict(window=16, n_after=3, n_explain=4, n_quantiles=4, per_quantile=3, n_non_activating=8)
    df = score_features(IdentitySAE(), acts, tok, pos, [0, 2], np.full(3, 0.6), judge, decode,
                        out_dir=tmp_path, do_spearman=True, context_kwargs=kw, show_progress=False,
                        n_workers=workers)
    assert df["feature"].tolist() == [0, 2]
    row = df.set_index("feature").loc[0]
    assert row["explanation"] == "the word cat"
    assert row["fuzz_score"] == pytest.approx(expected)
    assert row["detection_score"] == pytest.approx(expected)
    assert row["fuzz_n"] >= 8 and row["fuzz_n_missing"] == 0 and not row["missing"]
    assert row["spearman_rho"] > 0.9
    assert not any(c.endswith("_trace") for c in df.columns)
    assert (tmp_path / "contexts.json").exists() and (tmp_path / "features" / "0.json").exists()
    calls = judge.calls
    df2 = score_features(IdentitySAE(), acts, tok, pos, [0, 2], np.full(3, 0.6), judge, decode,
                         out_dir=tmp_path, do_spearman=True, context_kwargs=kw, show_progress=False)
    assert judge.calls == calls  # resumed from disk
    pd.testing.assert_frame_equal(df, df2)
    with pytest.raises(ValueError, match="another out_dir"):
        score_features(IdentitySAE(), acts, tok, pos, [0], np.full(3, 0.6), judge, decode,
                       out_dir=tmp_path, seed=5, context_kwargs=kw, show_progress=False)


def test_always_yes_judge_is_at_chance(tmp_path):
    class Yes(CatJudge):
        def judge_binary(self, explanation, items, task, n_positive=None):
            return [True] * len(items)

    tok, pos, acts, _ = corpus()
    df = score_features(IdentitySAE(), acts, tok, pos, [0], np.full(3, 0.6), Yes(), decode,
                        context_kwargs=dict(window=16), show_progress=False)
    assert df.loc[0, "fuzz_bal_acc"] == 0.5 and df.loc[0, "fuzz_score"] == 0.0


def test_paired_comparison_matches_reference():
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"feature": np.arange(50), "fuzz_score": rng.normal(0.2, 0.1, 50)})
    b = pd.DataFrame({"feature": np.arange(50) + 100, "fuzz_score": rng.normal(0.25, 0.1, 50)})
    b.loc[3, "fuzz_score"] = np.nan
    pairs = pd.DataFrame({"i": np.arange(50), "j": np.arange(50)[::-1] + 100})
    r = paired_comparison(a, b, pairs)
    va = a["fuzz_score"].to_numpy()
    vb = b["fuzz_score"].to_numpy()[::-1]
    keep = np.isfinite(vb)
    va, vb = va[keep], vb[keep]
    assert r["n_pairs"] == 49
    assert r["delta_mean"] == pytest.approx((vb - va).mean())
    t = stats.ttest_rel(vb, va)
    assert r["t"] == pytest.approx(t.statistic) and r["p"] == pytest.approx(t.pvalue)
    assert r["ci_low"] < r["delta_mean"] < r["ci_high"]
    assert r["share_b_higher"] == pytest.approx((vb > va).mean())


PAIRED_KEYS = ["column", "n_pairs", "mean_a", "mean_b", "delta_mean", "delta_rel", "t", "p", "df", "ci_low",
               "ci_high", "share_b_higher", "share_equal"]


def frames(va, vb):
    n = len(va)
    a = pd.DataFrame({"feature": np.arange(n), "fuzz_score": va})
    b = pd.DataFrame({"feature": np.arange(n) + 1000, "fuzz_score": vb})
    return a, b, pd.DataFrame({"i": np.arange(n), "j": np.arange(n) + 1000})


@pytest.mark.parametrize("seed", range(6))
def test_paired_comparison_equals_scipy_ttest_rel(seed):
    """Same numbers as scipy's ttest_rel and t interval (to rounding), keys and df type unchanged."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 120))
    if seed % 2:  # fuzz scores of lean settings take few values: ties and equal pairs
        va, vb = rng.choice([-1, -1 / 3, 1 / 3, 1], n), rng.choice([-1, -1 / 3, 1 / 3, 1], n)
    else:
        va, vb = rng.normal(0.2, 0.1, n), rng.normal(0.25, 0.1, n)
    for confidence in (0.95, 0.9):
        r = paired_comparison(*frames(va, vb), confidence=confidence)
        assert list(r) == PAIRED_KEYS
        d = vb - va
        ref = stats.ttest_rel(vb, va)
        lo, hi = stats.t.interval(confidence, n - 1, loc=d.mean(), scale=stats.sem(d))
        np.testing.assert_allclose([r["t"], r["p"], r["ci_low"], r["ci_high"]],
                                   [ref.statistic, ref.pvalue, lo, hi], rtol=1e-12, atol=1e-15)
        assert r["df"] == n - 1 and isinstance(r["df"], int)
        assert r["delta_mean"] == pytest.approx(d.mean(), rel=1e-12)
        assert r["delta_rel"] == pytest.approx(d.mean() / abs(va.mean()), rel=1e-12)
        assert r["share_b_higher"] == (d > 0).mean() and r["share_equal"] == (d == 0).mean()


@pytest.mark.parametrize("va,vb,df", [([], [], 0), ([0.5], [1.0], 0), ([0.0, 0.5, 1.0], [0.5, 1.0, 1.5], 2),
                                      ([0.2, 0.4], [0.2, 0.4], 1)])
def test_paired_comparison_degenerate_gives_nan_test(va, vb, df):
    """Fewer than two pairs, or every difference equal: no test (NaN), the rest as usual."""
    r = paired_comparison(*frames(np.array(va, float), np.array(vb, float)))
    assert list(r) == PAIRED_KEYS
    assert all(np.isnan(r[k]) for k in ("t", "p", "ci_low", "ci_high"))
    assert r["df"] == df and r["n_pairs"] == len(va)
    if va:
        assert r["delta_mean"] == pytest.approx(np.mean(np.subtract(vb, va)))
    else:
        assert np.isnan(r["delta_mean"]) and np.isnan(r["share_b_higher"])
