"""LocalLikelihoodJudge: log-probabilities against brute force, prefix KV cache, decisions."""

import numpy as np
import pytest
import torch

from paperlib.autointerp.judge import JudgeItem
from paperlib.autointerp.local import LocalLikelihoodJudge
from paperlib.autointerp.prompts import likelihood_prefixes
from paperlib.data.lm import load_hf


class CharTok:
    bos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 60) for c in text]}


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(64, 8, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, 64, generator=g))
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        h = torch.cumsum(self.emb[input_ids], dim=1)  # causal: depends on prefix only

        class R:
            pass

        r = R()
        r.logits = h @ self.out
        return r


def test_local_judge_logprobs_match_brute_force(tmp_path):
    model, tok = TinyLM(), CharTok()
    j = LocalLikelihoodJudge(model, tok, model_name="tiny", cache_dir=tmp_path / "c", batch_size=3)
    reqs = [("Pre: ", ["ab", "", "c"]), ("Longer prefix ", ["xyz"]), ("P", ["q", "rs", "t", "u"])]
    got = j.piece_logprobs(reqs)
    with torch.no_grad():
        for (prefix, pieces), vals in zip(reqs, got, strict=True):
            ids = [1] + tok(prefix)["input_ids"]
            for piece, v in zip(pieces, vals, strict=True):
                ref = 0.0
                for t in tok(piece)["input_ids"]:
                    lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
                    ref += float(lp[t])
                    ids = ids + [t]
                assert v == pytest.approx(ref, abs=1e-4)
    calls = model.calls
    assert j.piece_logprobs(reqs) == got  # cached: no forward pass
    assert model.calls == calls
    items = [JudgeItem(list("abc"), [False, True, False]), JudgeItem(list("xyz"), [True, False, False])]
    s = j.scores("letters", items, "fuzz")
    assert j.judge_binary("letters", items, "fuzz") == [s[0] > s[1], s[1] >= s[0]]
    preds = j.predict_activations("letters", items)
    assert [len(p) for p in preds] == [3, 3]
    assert j.pick("letters", ["abc", "xyz"]) in (0, 1)


def test_prefix_kv_cache_matches_full_forward():
    """The prefix-KV path (real transformers model) equals running every sequence in full."""
    try:
        model, tok = load_hf("tiny-smollm2", device="cpu")
    except Exception as err:  # pragma: no cover - offline model package missing
        pytest.skip(f"tiny-smollm2 unavailable: {err}")
    reqs = [("The following text is about cats.\n\n", [" The", " cat", " sat", "<<", " down", ">>"]),
            ("The following text is about cats.\n\n", [" A", " dog"]),
            ("The following text is about cats.\n\n", [" x"]),
            ("Other prefix\n", [" one", " two", " three"])]
    a = LocalLikelihoodJudge(model, tok, model_name="t", batch_size=3, use_prefix_cache=True)
    b = LocalLikelihoodJudge(model, tok, model_name="t", batch_size=3, use_prefix_cache=False)
    ra, rb = a.piece_logprobs(reqs), b.piece_logprobs(reqs)
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_allclose(x, y, atol=2e-3)
    # and equals an unbatched full forward of one sequence
    prefix, pieces = reqs[0]
    ids = [tok.bos_token_id] + tok(prefix, add_special_tokens=False)["input_ids"]
    P = len(ids)
    cont = [t for p in pieces for t in tok(p, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0].float(), -1)
    ref = sum(float(lp[P - 1 + i, t]) for i, t in enumerate(cont))
    assert sum(ra[0]) == pytest.approx(ref, abs=2e-3)


def test_gains_are_explanation_minus_neutral_logprobs(tmp_path):
    model, tok = TinyLM(), CharTok()
    j = LocalLikelihoodJudge(model, tok, model_name="tiny", cache_dir=tmp_path / "c")
    items = [JudgeItem(list("abc"), [False, True, False]), JudgeItem(list("xy"))]
    for fuzz in (True, False):
        pe, pn = likelihood_prefixes("letters.", fuzz)
        g = j.gains("letters.", items, fuzz=fuzz)
        for it, gi in zip(items, g, strict=True):
            le, ln = j.piece_logprobs([(pe, it.pieces()), (pn, it.pieces())])
            assert gi == pytest.approx([a - b for a, b in zip(le, ln, strict=True)])
    # scores sum the gains; the markers are only part of the text for fuzzing
    assert j.scores("letters", items, "fuzz") == pytest.approx([sum(x) for x in j.gains("letters", items, True)])
    assert [len(p) for p in j.predict_activations("letters", items)] == [3, 2]
    assert j.stats["forward_passes"] > 0 and j.stats["cache_hits"] > 0
    assert j.explain(items) == 'the word "b"'
    assert j.name == "local-likelihood:tiny"
    with pytest.raises(ValueError, match="unknown task"):
        j.judge_binary("letters", items, "rank")
