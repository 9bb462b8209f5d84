"""OpenAIJudge against a local fake chat-completions server: retries, failures, cache, key hygiene."""

import pytest

from paperlib.autointerp.client import OpenAIJudge
from paperlib.autointerp.judge import JudgeItem
from tests.autointerp.fake_chat import FakeChatServer as FakeServer


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def make_judge(server, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return OpenAIJudge(model="fake-model", base_url=server.url, api_key="sekrit-key-123",
                       max_retries=3, timeout=5, **kw)


ITEMS = [JudgeItem(["a", " cat"], [False, True]), JudgeItem(["a", " dog"], [True, False])]


def test_retry_on_429_and_500(server, tmp_path):
    server.script = [(429, b'{"error": "slow down"}'), (500, b"oops")]
    j = make_judge(server, tmp_path)
    assert j.judge_binary("cats", ITEMS, "fuzz") == [True, False]
    assert server.hits == 3  # the openai client retried both
    assert not j.failures
    assert server.auth[-1] == "Bearer sekrit-key-123"


def test_malformed_reply_is_reported(server, tmp_path):
    server.script = [(200, b"this is not json")]
    j = make_judge(server, tmp_path)
    assert j.judge_binary("cats", ITEMS, "fuzz") == [None, None]
    assert j.stats["malformed_reply"] == 1
    assert j.failures and j.failures[0]["kind"] == "malformed_reply" and server.url in j.failures[0]["detail"]
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
    assert server.hits == 4 and j.stats["http_error"] == 1 and "HTTP 503" in j.last_failure


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
    server.answer = lambda p: "Thinking...\nSummary: " + p["messages"][-1]["content"][:12]
    j = make_judge(server, tmp_path, max_workers=4)
    outs = j.chat_many([[{"role": "user", "content": f"msg {i:03d}"}] for i in range(12)])
    assert outs == [f"Thinking...\nSummary: msg {i:03d}" for i in range(12)]
    assert server.hits == 12
    assert j.explain(ITEMS).startswith("Passage 1: a")


def test_activation_prediction_and_pick(server, tmp_path):
    server.answer = lambda p: "[0, 7]" if "tokens:" in p["messages"][-1]["content"] else "2"
    j = make_judge(server, tmp_path)
    assert j.predict_activations("cats", ITEMS) == [[0.0, 7.0], [0.0, 7.0]]
    assert j.pick("cats", ["x", "y"]) == 1


@pytest.mark.parametrize("kw,name", [(dict(timeout=0), "timeout"), (dict(max_retries=-1), "max_retries"),
                                     (dict(max_consecutive_failures=0), "max_consecutive_failures")])
def test_settings_are_validated_by_name(server, tmp_path, kw, name):
    with pytest.raises(ValueError, match=name):
        OpenAIJudge(model="m", base_url=server.url, **kw)
