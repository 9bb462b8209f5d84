"""AUROC, test–retest reliability, the shuffled control on a judge whose answers depend on the explanation,
unscored rates, paired power and the design, each against a direct computation."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from paperlib.autointerp.contexts import Example
from paperlib.autointerp.reliability import (
    auroc,
    fisher_ci,
    paired_power,
    plan_design,
    retest_reliability,
    shuffled_control,
    unscored_rates,
)
from paperlib.autointerp.scoring import fuzz_examples, make_fuzz_items


def brute_auroc(labels, scores):
    pos = [s for lab, s in zip(labels, scores, strict=True) if lab]
    neg = [s for lab, s in zip(labels, scores, strict=True) if not lab]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(30) < 0.5
    scores = rng.integers(0, 5, 30).astype(float)  # ties on purpose
    assert auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores))
    assert math.isnan(auroc([True, True], [1.0, 2.0]))
    with pytest.raises(ValueError, match="non-finite"):
        auroc([True, False], [1.0, np.nan])


def test_retest_reliability_against_direct_fisher_ci():
    rng = np.random.default_rng(0)
    t = rng.normal(size=60)
    a, b = t + rng.normal(size=60), t + rng.normal(size=60)
    res = retest_reliability(a, b)
    r = np.corrcoef(a, b)[0, 1]
    z, half = np.arctanh(r), stats.norm.ppf(0.975) / np.sqrt(60 - 3)
    assert res["pearson_r"] == pytest.approx(r)
    assert (res["pearson_low"], res["pearson_high"]) == pytest.approx((np.tanh(z - half), np.tanh(z + half)))
    ci = stats.pearsonr(a, b).confidence_interval(0.95)
    assert (res["pearson_low"], res["pearson_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    rho = stats.spearmanr(a, b).statistic
    assert res["spearman_rho"] == pytest.approx(rho)
    assert (res["spearman_low"], res["spearman_high"]) == pytest.approx(
        fisher_ci(rho, 60, se_scale=np.sqrt(1 + rho**2 / 2)))
    with pytest.raises(ValueError, match="first has non-finite"):
        retest_reliability([np.nan, 1, 2, 3], [1, 2, 3, 4])


class WordJudge:
    """Rates an item by whether its highlighted tokens are the word the explanation names (plus noise)."""

    name = "word-judge"
    stats: dict = {}

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def scores(self, explanation, items, task):
        word = explanation.split('"')[1]
        return [float(all(t == word for t, h in zip(it.tokens, it.highlight, strict=True) if h))
                + self.rng.normal(0, 0.3) for it in items]


def _windows(word_id, n=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        ids = rng.integers(10, 20, 8).tolist()
        p = int(rng.integers(1, 7))
        ids[p] = word_id
        out.append(Example(k, 0, 8, ids, [float(i == p) for i in range(8)], "quantile", 0, p))
    return out


def decode(ids):
    return [f"w{i}" for i in ids]


def test_shuffled_control_on_a_judge_that_reads_the_explanation():
    judge = WordJudge()
    real, shuf = [], []
    for f in range(30):
        exs = _windows(f % 3, seed=f)
        own, other = f'"w{f % 3}"', f'"w{(f + 1) % 3}"'
        real.append(fuzz_examples(exs, f, own, judge, decode, min_windows=10)["fuzz_auroc"])
        shuf.append(fuzz_examples(exs, f, other, judge, decode, prefix="shuffled")["shuffled_auroc"])
    res = shuffled_control(real, shuf)
    assert res["real_mean"] > 0.9 and res["at_chance"] and res["real_above"]
    t = stats.ttest_rel(real, shuf)
    assert res["diff_p"] == pytest.approx(t.pvalue)
    assert res["shuffled_p_vs_chance"] == pytest.approx(stats.ttest_1samp(shuf, 0.5).pvalue)


def test_fuzz_items_pair_every_window_and_need_min_windows():
    exs = _windows(1, n=4)
    items = make_fuzz_items(exs, seed=3)
    assert len(items) == 8 and sum(i.correct for i in items) == 4
    assert sorted(i.example for i in items) == [0, 0, 1, 1, 2, 2, 3, 3]
    rec = fuzz_examples(exs, 0, '"w1"', WordJudge(), decode, min_windows=10)
    assert math.isnan(rec["fuzz_auroc"]) and "fewer than 10" in rec["fuzz_unscored"]


def test_paired_power_matches_ttest_rel_and_statsmodels():
    rng = np.random.default_rng(1)
    a = rng.normal(0.6, 0.1, 80)
    b = a + rng.normal(0.01, 0.05, 80)
    res = paired_power(a, b)
    t = stats.ttest_rel(b, a)
    assert (res["t"], res["p"]) == pytest.approx((t.statistic, t.pvalue))
    d = TTestPower().solve_power(nobs=80, alpha=0.05, power=0.8)
    assert res["mde"] == pytest.approx(d * np.std(b - a, ddof=1))
    lo, hi = t.confidence_interval(0.95)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((lo, hi))


def test_unscored_rates_is_fisher_exact():
    res = unscored_rates(3, 12, 60)
    assert res["fisher_p"] == pytest.approx(stats.fisher_exact([[3, 57], [12, 48]]).pvalue)
    with pytest.raises(ValueError, match="n_unscored_a"):
        unscored_rates(-1, 0, 5)


def test_plan_design_fills_the_budget():
    d = plan_design(0.5, 0.25, 100.0, retest_share=0.25, shuffled_share=0.5)
    assert d.sec_per_pair == pytest.approx(2 * 1.25 * 0.5 + 2 * 0.5 * 0.25)
    assert d.n_pairs == int(100 // d.sec_per_pair) and d.n_retest == math.ceil(0.25 * d.n_pairs)
    assert plan_design(0.5, 0.25, 100.0, max_pairs=10).n_pairs == 10
    with pytest.raises(ValueError, match="budget_s"):
        plan_design(0.5, 0.25, float("nan"))
    with pytest.raises(ValueError, match="retest_share"):
        plan_design(0.5, 0.25, 10.0, retest_share=2)


def test_chat_judge_explains_and_its_auroc_is_the_balanced_accuracy(tmp_path):
    from paperlib.autointerp.client import OpenAIJudge
    from paperlib.autointerp.contexts import FeatureContexts
    from paperlib.autointerp.scoring import balanced_accuracy, score_contexts
    from tests.autointerp.fake_chat import FakeChatServer

    def answer(payload):
        user = payload["messages"][-1]["content"]
        if "Description of the unit" not in user:
            return "Thinking.\nSummary: the token w1 after numbers"
        passages = [p for p in user.split("Passage ")[1:]]
        return "[" + ", ".join("1" if "<<w1>>" in p else "0" for p in passages) + "]"

    server = FakeChatServer(answer)
    try:
        judge = OpenAIJudge(model="m", base_url=server.url, cache_dir=tmp_path, max_workers=2)
        ctx = FeatureContexts(feature=3, n_firing=10, T=100, explain=_windows(1, n=3), activating=_windows(1, n=20))
        rec = score_contexts(ctx, judge, decode, do_detection=False, halves=True, min_windows=10)
    finally:
        server.httpd.shutdown()
    assert rec["explanation"] == "the token w1 after numbers"  # written by the judge model
    labels = [t["correct"] for t in rec["fuzz_trace"]]
    preds = [t["pred"] for t in rec["fuzz_trace"]]
    assert rec["fuzz_n"] == 20 and rec["fuzz_auroc"] == pytest.approx(balanced_accuracy(labels, preds))
    assert rec["fuzz_auroc"] > 0.5
