"""OpenAIJudge against a local fake chat-completions server: retries, failures, cache, key hygiene."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from paperlib.autointerp.client import OpenAIJudge
from paperlib.autointerp.judge import JudgeItem


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
