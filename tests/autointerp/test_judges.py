import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from paperlib.autointerp.judges import (
    DiskCache,
    JudgeItem,
    LocalLikelihoodJudge,
    OpenAIJudge,
    judge_sanity_check,
    parse_binary_list,
    parse_explanation,
    rank_decisions,
    template_explanation,
)


# --------------------------------------------------------------------------- fake server
class FakeServer:
    """Chat-completions server on 127.0.0.1; ``script`` is a queue of (status, body) overrides."""

    def __init__(self, answer=lambda payload: "[1, 0]"):
        self.hits = 0
        self.script: list[tuple[int, bytes]] = []
        self.answer = answer
        self.auth: list[str | None] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(n))
                with lock:
                    outer.hits += 1
                    outer.auth.append(self.headers.get("Authorization"))
                    status, body = outer.script.pop(0) if outer.script else (200, None)
                if body is None:
                    body = json.dumps({"choices": [{"message": {
                        "role": "assistant", "content": outer.answer(payload)}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def make_judge(server, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return OpenAIJudge(model="fake-model", base_url=server.url, api_key="sekrit-key-123",
                       backoff=0.01, max_retries=3, timeout=5, **kw)


ITEMS = [JudgeItem(["a", " cat"], [False, True]), JudgeItem(["a", " dog"], [True, False])]


def test_retry_on_429_and_500(server, tmp_path):
    server.script = [(429, b'{"error": "slow down"}'), (500, b"oops")]
    j = make_judge(server, tmp_path)
    assert j.judge_binary("cats", ITEMS, "fuzz") == [True, False]
    assert server.hits == 3
    assert j.stats["http_429"] == 1 and j.stats["http_500"] == 1
    assert server.auth[-1] == "Bearer sekrit-key-123"


def test_malformed_reply_is_reported(server, tmp_path):
    server.script = [(200, b"this is not json")]
    j = make_judge(server, tmp_path)
    assert j.judge_binary("cats", ITEMS, "fuzz") == [None, None]
    assert j.stats["malformed_reply"] == 1
    assert j.failures and j.failures[0]["kind"] == "malformed_reply"
    # a well-formed reply with an unparseable answer is an invalid answer, not a crash
    server.answer = lambda p: "I think the first one"
    assert j.judge_binary("dogs", ITEMS, "fuzz") == [None, None]
    assert j.stats["invalid_answer"] == 1
    # non-retryable HTTP error
    server.script = [(400, b"bad request")]
    assert j.chat([{"role": "user", "content": "x"}]) is None
    assert j.stats["http_error"] == 1


def test_gives_up_after_retries(server, tmp_path):
    server.script = [(503, b"")] * 10
    j = make_judge(server, tmp_path)
    assert j.chat([{"role": "user", "content": "x"}]) is None
    assert server.hits == 4 and j.stats["gave_up"] == 1


def test_disk_cache_prevents_repeated_calls(server, tmp_path):
    j = make_judge(server, tmp_path)
    msgs = [{"role": "user", "content": "hello"}]
    assert j.chat(msgs) == "[1, 0]"
    assert j.chat(msgs) == "[1, 0]"
    assert server.hits == 1
    j2 = make_judge(server, tmp_path)  # fresh process-like instance, same cache
    assert j2.chat(msgs) == "[1, 0]"
    assert server.hits == 1 and j2.stats["cache_hits"] == 1
    # failed calls are not cached
    server.script = [(200, b"garbage")]
    assert j.chat([{"role": "user", "content": "other"}]) is None
    assert j.chat([{"role": "user", "content": "other"}]) == "[1, 0]"
    # the key never reaches the cache
    for p in (tmp_path / "cache").rglob("*.json"):
        assert "sekrit" not in p.read_text()
    assert "sekrit" not in repr(j)


def test_concurrency_and_explain(server, tmp_path):
    server.answer = lambda p: "Thinking...\n[EXPLANATION]: " + p["messages"][-1]["content"][:12]
    j = make_judge(server, tmp_path, max_workers=4)
    outs = j.chat_many([[{"role": "user", "content": f"msg {i:03d}"}] for i in range(12)])
    assert outs == [f"Thinking...\n[EXPLANATION]: msg {i:03d}" for i in range(12)]
    assert server.hits == 12
    assert j.explain(ITEMS).startswith("Example 1: a")


def test_activation_prediction_and_pick(server, tmp_path):
    server.answer = lambda p: "[0, 7]" if "Tokens" in p["messages"][-1]["content"] else "2"
    j = make_judge(server, tmp_path)
    assert j.predict_activations("cats", ITEMS) == [[0.0, 7.0], [0.0, 7.0]]
    assert j.pick("cats", ["x", "y"]) == 1


def test_parsers():
    assert parse_binary_list("Sure: [1, 0, 1]", 3) == [True, False, True]
    assert parse_binary_list("[1, 0]", 3) is None
    assert parse_binary_list("[1, 2, 0]", 3) is None
    assert parse_explanation("blah\n[EXPLANATION]: the word cat") == "the word cat"
    assert parse_explanation("") is None
    assert JudgeItem(["a", "b", "c", "d"], [True, True, False, True]).text() == "<<ab>>c<<d>>"


def test_rank_decisions_and_template():
    assert rank_decisions([0.1, 3.0, -1.0, 2.0]) == [False, True, False, True]
    assert rank_decisions([1, 2, 3], n_positive=1) == [False, False, True]
    items = [JudgeItem([" the", " big", " cat"], [False, False, True]),
             JudgeItem([" a", " big", " cat"], [False, False, True]),
             JudgeItem([" one", " dog"], [False, True])]
    assert template_explanation(items) == 'the words "cat" and "dog" after "big"'


# --------------------------------------------------------------------------- local judge
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


# --------------------------------------------------------------------------- sanity check
class KeywordJudge:
    name = "keyword"
    stats: dict = {}

    def pick(self, explanation, texts):
        key = explanation.split()[0]
        hits = [key in t for t in texts]
        return hits.index(True) if any(hits) else 0


def test_sanity_check_with_fake_judge():
    rng = np.random.default_rng(0)
    data = {c: [f"title\n{' '.join([c] * 5 + list(rng.choice(['x', 'y'], 50)))}" for _ in range(5)]
            for c in ("sport", "tech", "politics")}
    data = {c: [t.split("\n", 1)[1] for t in v] for c, v in data.items()}
    expl = {c: f"{c} news" for c in data}
    r = judge_sanity_check(KeywordJudge(), n=30, seed=1, n_words=200, data=data, explanations=expl)
    assert r["correct"] == 30 and r["accuracy"] == 1.0
    assert r["p_value"] < 1e-8 and r["wilson_low"] > 0.85
    assert len(r["trials"]) == 30


def test_bbc_snippets_available():
    from paperlib.autointerp.judges import BBC_EXPLANATIONS, bbc_snippets

    d = bbc_snippets()
    assert set(d) == {"business", "entertainment", "politics", "sports", "tech"}
    assert set(d) == set(BBC_EXPLANATIONS)
    assert all(len(v) > 300 for v in d.values())


def test_disk_cache_key_stable(tmp_path):
    c = DiskCache(tmp_path)
    k = c.key("b", "m", {"x": 1, "y": [1, 2]})
    assert k == c.key("b", "m", {"y": [1, 2], "x": 1})
    assert c.get(k) is None
    c.put(k, {"x": 1}, {"content": "ok"})
    assert c.get(k) == {"content": "ok"}


def test_prefix_kv_cache_matches_full_forward():
    """The prefix-KV path (real transformers model) equals running every sequence in full."""
    try:
        from paperlib.data.lm import load_hf

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
