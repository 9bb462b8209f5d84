import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from paperlib.autointerp.judges import JudgeItem
from paperlib.autointerp.scoring import (
    Example,
    balanced_accuracy,
    collect_contexts,
    collect_feature_activations,
    load_contexts,
    make_fuzz_items,
    paired_comparison,
    random_highlight,
    save_contexts,
    score_features,
)

ROWS, CTX, CAT = 12, 64, 7  # token id 7 is " cat"
VOCAB = {i: f" w{i}" for i in range(100)} | {CAT: " cat"}


def decode(ids):
    return [VOCAB[int(i)] for i in ids]


class IdentitySAE:
    """codes = x where x > θ (per token), so the activation array *is* the code matrix."""

    def encode(self, x, thresholds=None):
        return torch.where(x > thresholds, x, torch.zeros_like(x))


def corpus(seed=0):
    """Rows of random tokens; BOS at position 0 dropped; feature 0 fires on every CAT token."""
    rng = np.random.default_rng(seed)
    tok = rng.integers(10, 100, size=(ROWS, CTX))
    tok[:, 0] = 1  # BOS
    cat_pos = [(r, p) for r in range(ROWS) for p in rng.choice(np.arange(1, CTX), 3, replace=False)]
    for r, p in cat_pos:
        tok[r, p] = CAT
    positions = np.array([(r, p) for r in range(ROWS) for p in range(1, CTX)], dtype=np.int64)
    T = len(positions)
    acts = np.zeros((T, 3), np.float32)
    row_of = {(int(r), int(p)): t for t, (r, p) in enumerate(positions)}
    vals = {}
    for k, (r, p) in enumerate(cat_pos):
        vals[(int(r), int(p))] = 1.0 + k  # distinct values
        acts[row_of[(int(r), int(p))], 0] = 1.0 + k
    acts[::5, 1] = 0.5  # feature 1: frequent, below threshold 0.6 → never fires
    acts[::7, 2] = 2.0
    return tok, positions, acts, vals


def test_collect_feature_activations_exact():
    tok, pos, acts, vals = corpus()
    fa = collect_feature_activations(IdentitySAE(), acts, [0, 1, 2], np.full(3, 0.6), chunk_size=100,
                                     show_progress=False)
    assert fa.T == len(pos)
    ref0 = np.flatnonzero(acts[:, 0])
    np.testing.assert_array_equal(fa.idx[0], ref0)
    np.testing.assert_array_equal(fa.val[0], acts[ref0, 0])
    assert len(fa.idx[1]) == 0
    np.testing.assert_array_equal(fa.idx[2], np.arange(0, len(pos), 7))
    with pytest.raises(ValueError):
        collect_feature_activations(IdentitySAE(), acts, [0], None)


def test_collect_contexts_hand_built(tmp_path):
    tok, pos, acts, vals = corpus()
    fa = collect_feature_activations(IdentitySAE(), acts, [0, 1], np.full(3, 0.6), show_progress=False)
    ctxs = collect_contexts(fa, tok, pos, window=16, n_after=3, n_explain=4, n_quantiles=4,
                            per_quantile=2, n_non_activating=5, seed=3)
    c = ctxs[0]
    assert c.n_firing == 3 * ROWS
    # explanation windows: the top activations (non-overlapping windows), in decreasing order
    peaks = [ex.acts[ex.peak] for ex in c.explain]
    assert peaks[0] == max(vals.values()) and peaks == sorted(peaks, reverse=True)
    assert len(c.explain) == 4
    for ex in c.explain + c.activating + c.non_activating:
        assert ex.end - ex.start == 16 and 0 <= ex.start and ex.end <= CTX
        assert ex.token_ids == tok[ex.row, ex.start:ex.end].tolist()
        # per-token activations are exactly the hand-built pattern (BOS → 0)
        want = [vals.get((ex.row, ex.start + i), 0.0) for i in range(16)]
        assert ex.acts == want
    for ex in c.explain + c.activating:
        assert ex.acts[ex.peak] > 0 and ex.token_ids[ex.peak] == CAT
        if ex.start + ex.peak + 3 < CTX and ex.start > 0:
            assert ex.peak == 16 - 1 - 3
    for ex in c.non_activating:
        assert max(ex.acts) == 0
    # windows never overlap within a feature
    spans = sorted((ex.row, ex.start, ex.end) for ex in c.explain + c.activating + c.non_activating)
    for (r1, _, e1), (r2, s2, _) in zip(spans, spans[1:], strict=False):
        assert r1 != r2 or s2 >= e1
    # test examples come from several quantiles
    assert len({ex.quantile for ex in c.activating}) >= 3
    # dead feature: no activating examples, non-activating ones still sampled
    assert ctxs[1].n_firing == 0 and not ctxs[1].activating and len(ctxs[1].non_activating) == 5
    # seeded
    again = collect_contexts(fa, tok, pos, window=16, n_after=3, n_explain=4, n_quantiles=4,
                             per_quantile=2, n_non_activating=5, seed=3)
    assert again[0] == c
    save_contexts(tmp_path / "ctx.json", ctxs)
    assert load_contexts(tmp_path / "ctx.json") == ctxs


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
    assert len(items) == 9 and sum(i.correct for i in items) == 5
    for it in items:
        true = exs[it.example].active_mask()
        assert sum(it.highlight) == sum(true)
        assert (it.highlight == true) == it.correct
    assert 9 not in {i.example for i in items}


def test_balanced_accuracy_hand_computed():
    labels = [True, True, True, False]
    assert balanced_accuracy(labels, [True, True, False, False]) == pytest.approx(0.5 * (2 / 3 + 1))
    assert balanced_accuracy(labels, [True, None, True, None]) == pytest.approx(0.5 * (2 / 3 + 0))
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
    assert row["fuzz_n"] >= 8 and row["fuzz_n_invalid"] == 0
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


def test_judge_item_round_trip():
    assert JudgeItem([" a", " cat"], [False, True]).text() == " a<< cat>>"


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
