"""Sparse feature activations and context windows on a hand-built corpus."""

import numpy as np
import pytest
import torch

from paperlib.autointerp.contexts import (
    collect_contexts,
    collect_feature_activations,
    load_contexts,
    save_contexts,
    token_decoder,
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


def test_token_decoder_memoises():
    class Tok:
        calls = 0

        def decode(self, ids):
            Tok.calls += 1
            return f"<{ids[0]}>"

    dec = token_decoder(Tok())
    assert dec(np.array([3, 4, 3])) == ["<3>", "<4>", "<3>"]
    assert dec([4]) == ["<4>"] and Tok.calls == 2


def test_collect_feature_activations_matches_full_batch_encode():
    from paperlib.sae.models import BatchTopKSAE

    sae = BatchTopKSAE(6, 20, 3, seed=4)
    acts = (np.random.default_rng(5).normal(size=(300, 6)) * 2).astype(np.float16)
    theta = np.random.default_rng(6).uniform(0.0, 0.4, 20).astype(np.float32)
    feats = [0, 3, 7, 19]
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(acts.astype(np.float32)), thresholds=torch.from_numpy(theta)).numpy()
    for th in (theta, torch.from_numpy(theta)):
        fa = collect_feature_activations(sae, acts, feats, th, chunk_size=64, show_progress=False)
        assert fa.T == 300
        for f in feats:
            np.testing.assert_array_equal(fa.idx[f], np.flatnonzero(codes[:, f] > 0))
            np.testing.assert_allclose(fa.val[f], codes[codes[:, f] > 0, f], rtol=0, atol=1e-5)
