"""Auto-interp pipeline glue (paperlib.stages.interp): seeded sampling, caching, paired summary."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from paperlib.metrics import matching
from paperlib.stages import interp
from paperlib.stages.run import Run
from paperlib.stages.train import ensure_trained
from tests.helpers import tiny_profile


class FakeJudge:
    """Deterministic judge answering from a hash of each item's text; counts its calls."""

    name = "fake-judge"

    def __init__(self):
        self.stats: dict = {}
        self.calls = 0

    def explain(self, items):
        self.calls += 1
        return "the word " + (items[0].tokens[0] if items else "none")

    def judge_binary(self, explanation, items, task, n_positive=None):
        self.calls += 1
        return [hashlib.sha256((explanation + it.text()).encode()).digest()[0] % 2 == 0
                for it in items]

    def predict_activations(self, explanation, items):
        return [[0.0] * len(it.tokens) for it in items]

    def pick(self, explanation, texts):
        self.calls += 1
        return 0


def test_sample_pairs_seeded_and_uniform():
    pairs = pd.DataFrame({"i": np.arange(100), "j": np.arange(100)[::-1], "cosine": np.linspace(0, 1, 100)})
    a = interp.sample_pairs(pairs, 10, seed=3)
    b = interp.sample_pairs(pairs, 10, seed=3)
    c = interp.sample_pairs(pairs, 10, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["i"].equals(c["i"])
    assert len(a) == 10 and a["i"].is_unique and a["i"].is_monotonic_increasing
    assert set(a["i"]) <= set(pairs["i"])
    assert (a["j"] == 99 - a["i"]).all()  # rows stay intact
    assert len(interp.sample_pairs(pairs, None)) == 100
    assert len(interp.sample_pairs(pairs, 1000)) == 100
    # uniform: every pair is drawn about equally often over many seeds
    counts = np.zeros(100)
    for s in range(400):
        counts[interp.sample_pairs(pairs, 10, seed=s)["i"].to_numpy()] += 1
    assert stats.chisquare(counts).pvalue > 1e-4


def test_summary_equals_ttest_rel():
    rng = np.random.default_rng(0)
    n = 50
    pairs = pd.DataFrame({"i": np.arange(n), "j": np.arange(n) + 100, "cosine": 1.0})
    a = pd.DataFrame({"feature": np.arange(n), "fuzz_score": rng.choice([-.5, 0, .5, 1], n)})
    b = pd.DataFrame({"feature": np.arange(n) + 100, "fuzz_score": rng.choice([-.5, 0, .5, 1], n)})
    b.loc[3, "fuzz_score"] = np.nan  # dropped pair
    s = interp.summarize_comparison(a, b, pairs)
    keep = b["fuzz_score"].notna().to_numpy()
    va, vb = a["fuzz_score"].to_numpy()[keep], b["fuzz_score"].to_numpy()[keep]
    ref = stats.ttest_rel(vb, va)
    d = vb - va
    assert s["n_pairs"] == n - 1
    assert s["mean_solo"] == pytest.approx(va.mean()) and s["mean_joint"] == pytest.approx(vb.mean())
    assert s["delta"] == pytest.approx(d.mean())
    assert s["delta_pct"] == pytest.approx(100 * d.mean() / abs(va.mean()))
    assert s["t"] == pytest.approx(ref.statistic) and s["p"] == pytest.approx(ref.pvalue)
    lo, hi = stats.t.interval(0.95, n - 2, loc=d.mean(), scale=stats.sem(d))
    assert s["ci_low"] == pytest.approx(lo) and s["ci_high"] == pytest.approx(hi)
    assert s["pct_joint_higher"] == pytest.approx(100 * (d > 0).mean())


def test_make_judge_kinds(tmp_path):
    from paperlib.autointerp.local import LocalLikelihoodJudge

    j = interp.make_judge("local", cache_dir=tmp_path)
    assert isinstance(j, LocalLikelihoodJudge) and j.cache.root == tmp_path
    with pytest.raises(ValueError, match="unknown judge kind"):
        interp.make_judge("gpt")


def test_pipeline_cached_and_consistent(tmp_artifacts, monkeypatch):
    p = tiny_profile()
    joint = "joint-l0.3-s1"
    ensure_trained(p, ["solo", joint], progress=False)

    real_match = matching.hungarian_match
    n_match = []
    monkeypatch.setattr(interp, "hungarian_match", lambda *a, **k: n_match.append(1) or real_match(*a, **k))
    m1 = interp.ensure_matching(Run.of(p, "solo"), Run.of(p, joint))
    m2 = interp.ensure_matching(Run.of(p, "solo"), Run.of(p, joint))
    assert len(n_match) == 1
    pd.testing.assert_frame_equal(m1.pairs, m2.pairs)
    assert m1.n_pairs == min(m1.n_alive_a, m1.n_alive_b) and m1.n_pairs >= 6
    assert m1.pairs["i"].is_unique and m1.pairs["j"].is_unique

    judge = FakeJudge()
    per1, s1 = interp.compare_runs(Run.of(p, "solo"), Run.of(p, joint), 6, judge, seed=1, show_progress=False)
    calls = judge.calls
    assert calls > 0 and s1["n_new_features"] == 12 and s1["n_sampled"] == 6
    per2, s2 = interp.compare_runs(Run.of(p, "solo"), Run.of(p, joint), 6, judge, seed=1, show_progress=False)
    assert judge.calls == calls and s2["n_new_features"] == 0  # everything cached
    pd.testing.assert_frame_equal(per1, per2)
    # the sample is the seeded sample of the matched pairs
    ref = interp.sample_pairs(m1.pairs, 6, seed=1)
    assert per1["solo_feature"].tolist() == ref["i"].tolist()
    assert per1["joint_feature"].tolist() == ref["j"].tolist()
    # summary numbers = scipy on the per-pair table
    ok = per1["fuzz_solo"].notna() & per1["fuzz_joint"].notna()
    a, b = per1.loc[ok, "fuzz_solo"].to_numpy(), per1.loc[ok, "fuzz_joint"].to_numpy()
    assert s1["n_pairs"] == ok.sum()
    assert s1["mean_solo"] == pytest.approx(a.mean()) and s1["mean_joint"] == pytest.approx(b.mean())
    if len(a) >= 2 and np.std(b - a) > 0:
        assert s1["t"] == pytest.approx(stats.ttest_rel(b, a).statistic)
    # a larger sample reuses the scored features (resume) and only scores the new ones
    per3, s3 = interp.compare_runs(Run.of(p, "solo"), Run.of(p, joint), None, judge, seed=1, show_progress=False)
    assert s3["n_new_features"] < 2 * len(per3)


def test_ensure_sanity_cached(tmp_artifacts, monkeypatch):
    from paperlib.autointerp import sanity

    data = {"a": ["x " * 50] * 3, "b": ["y " * 50] * 3}
    monkeypatch.setattr(sanity, "bbc_snippets", lambda: data)
    monkeypatch.setattr(sanity, "BBC_EXPLANATIONS", {"a": "a", "b": "b"})
    judge = FakeJudge()
    r1 = interp.ensure_sanity("smoke", judge, n=10)
    calls = judge.calls
    r2 = interp.ensure_sanity("smoke", judge, n=10)
    assert judge.calls == calls == 10 and r1 == r2
    assert r1["n"] == 10 and "significant" in r1


def test_parallel_training_matches_sequential(tmp_path, monkeypatch):
    """Runs trained by worker processes equal runs trained in this process (same seeds)."""
    from safetensors.torch import load_file

    from paperlib.config import paths
    p = tiny_profile()
    names = ["solo", "joint-l0.3-s1"]
    weights = {}
    for workers in (1, 2):
        monkeypatch.setenv("PAPERLIB_ARTIFACTS", str(tmp_path / f"w{workers}"))
        dirs = ensure_trained(p, names, progress=False, n_workers=workers)
        assert set(dirs) == set(names)
        weights[workers] = {n: load_file(str(paths.run_dir(p, n) / "sae" / "model.safetensors")) for n in names}
    for n in names:
        for key, a in weights[1][n].items():
            b = weights[2][n][key]
            assert a.shape == b.shape
            assert (a.float() - b.float()).abs().max() <= 1e-4, (n, key)


class ScoreJudge(FakeJudge):
    """FakeJudge with continuous ratings that depend on the explanation and the highlight."""

    name = "score-judge"

    def scores(self, explanation, items, task):
        self.calls += 1
        return [hashlib.sha256((explanation + it.text()).encode()).digest()[0] / 255 for it in items]


SMALL = dict(window=8, n_after=2, explain_window=12, n_explain=3, n_quantiles=4, per_quantile=2, n_non_activating=0)


def test_seed_pair_comparison_cached_nested_and_equal_to_scipy(tmp_artifacts):
    p = tiny_profile(primary_seeds=2, primary_arms=("solo", "joint"))
    runs = interp.seed_pairs(p, "joint")
    assert [(a.name, b.name) for a, b in runs] == [("solo", "joint-l0.3-s1"), ("solo-seed1", "joint-l0.3-s1-seed1")]
    with pytest.raises(ValueError, match="sae='solo'"):
        interp.seed_pairs(p, "solo")
    ensure_trained(p, [r for pair in runs for r in pair], progress=False)
    judge = ScoreJudge()
    kw = dict(arm="joint", n_pairs=8, pilot_pairs=2, retest_share=0.5, shuffled_share=1.0, context_kwargs=SMALL,
              min_windows=2, seed=0, show_progress=False)
    per, s = interp.compare_seed_pairs(p, judge, **kw)
    assert per["seed_pair"].tolist()[:4] == [0, 1, 0, 1] and len(per) == 8  # interleaved over the seeds
    calls = judge.calls
    per2, s2 = interp.compare_seed_pairs(p, judge, **kw)
    assert judge.calls == calls  # all cached
    pd.testing.assert_frame_equal(per, per2)
    ok = per["auroc_solo"].notna() & per["auroc_joint"].notna()
    a, b = per.loc[ok, "auroc_solo"].to_numpy(), per.loc[ok, "auroc_joint"].to_numpy()
    assert s["paired_n_pairs"] == ok.sum() >= 2
    if np.std(b - a) > 0:
        t = stats.ttest_rel(b, a)
        assert (s["paired_t"], s["paired_p"]) == pytest.approx((t.statistic, t.pvalue))
    else:  # the tiny runs barely train, so matched features can score identically
        assert np.isnan(s["paired_p"]) and s["paired_delta"] == pytest.approx(np.mean(b - a))
    assert s["unscored_unscored_a"] == per["auroc_solo"].isna().sum()
    shuffled = per[per["shuffled_donor_solo"] >= 0]
    assert len(shuffled) and (shuffled["shuffled_donor_solo"] != shuffled["solo_feature"]).all()
    assert per["retest_solo"].iloc[4:].isna().all()  # only the first half of the pairs is retested
    # budget mode: the plan is stored and reused
    kw.update(n_pairs=None, budget_s=5.0)
    per3, s3 = interp.compare_seed_pairs(p, judge, **kw)
    per4, s4 = interp.compare_seed_pairs(p, judge, **kw)
    assert s3["n_pairs_planned"] == s4["n_pairs_planned"] >= 2 and "fit 5 s" in s3["how"]
    with pytest.raises(ValueError, match="budget_s"):
        interp.compare_seed_pairs(p, judge, **{**kw, "budget_s": 0})
