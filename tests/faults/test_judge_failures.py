"""Reliability: judge failures never become results (offline fake endpoint, tiny hand-built corpus).

An endpoint that never answers, refuses the key or sends unparseable answers must stop the run with a
clear error or leave the answers missing; nothing missing is cached; caches are keyed by endpoint.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from paperlib.autointerp import sanity
from paperlib.autointerp.client import OpenAIJudge
from paperlib.autointerp.judge import JudgeAuthError, JudgeError
from paperlib.autointerp.prompts import EXPLAIN_SYSTEM, PICK_SYSTEM
from paperlib.autointerp.scoring import score_features
from paperlib.metrics.matching import MatchResult
from paperlib.report.autointerp import summary_table
from paperlib.stages import interp
from paperlib.stages.run import Run
from tests.autointerp.fake_chat import FakeChatServer
from tests.autointerp.test_contexts import IdentitySAE, corpus, decode
from tests.helpers import tiny_profile

CTX = dict(window=16, n_after=3, n_explain=4, n_quantiles=2, per_quantile=2, n_non_activating=0)


def _n_passages(payload: dict) -> int:
    return len(re.findall(r"^Passage \d+:", payload["messages"][-1]["content"], re.M))


def healthy(payload: dict) -> str:
    """A judge that follows every format: explains, picks passage 1, marks every passage correct."""
    system = payload["messages"][0]["content"]
    if system == EXPLAIN_SYSTEM:
        return "Thinking.\nSummary: the word cat"
    if system == PICK_SYSTEM:
        return "1"
    return str([1] * _n_passages(payload))


@pytest.fixture()
def server():
    s = FakeChatServer(healthy)
    yield s
    s.close()


@pytest.fixture()
def bbc(monkeypatch):
    data = {c: [" ".join(f"{c}{i}x{k}" for k in range(200)) for i in range(4)] for c in ("apple", "banana")}
    monkeypatch.setattr(sanity, "bbc_snippets", lambda: data)
    monkeypatch.setattr(sanity, "BBC_EXPLANATIONS", {"apple": "apples", "banana": "bananas"})


def judge_at(url: str, cache_dir, **kw) -> OpenAIJudge:
    kw = {"max_retries": 0, "timeout": 5, "max_workers": 2, **kw}
    return OpenAIJudge(model="fake-model", base_url=url, api_key="k", cache_dir=cache_dir, **kw)


# --------------------------------------------------------------------------- endpoint that never answers
def test_silent_endpoint_stops_the_run_naming_url_and_cause(tmp_artifacts, bbc):
    dead = FakeChatServer(hang=True)
    try:
        j = judge_at(dead.url, tmp_artifacts / "cache", timeout=0.2, max_consecutive_failures=3)
        with pytest.raises(JudgeError) as e:
            interp.ensure_sanity("smoke", j, n=10)
        assert dead.url in str(e.value) and "no reply" in str(e.value) and "0.2 s" in str(e.value)
        assert dead.hits == 3  # stopped after three failed calls, not after every trial
        # without the early stop, the answered share stops it, naming the endpoint and the cause
        j = judge_at(dead.url, tmp_artifacts / "cache", timeout=0.2, max_consecutive_failures=100)
        with pytest.raises(JudgeError, match=r"answered 0 of 4 sanity-check trials .*timeout: no reply from") as e:
            interp.ensure_sanity("smoke", j, n=4)
        assert dead.url in str(e.value) and "allow_partial=True" in str(e.value)
    finally:
        dead.close()
    assert not list((tmp_artifacts / "cache").rglob("*.json"))  # nothing cached
    assert not list(tmp_artifacts.rglob("judge_sanity/*.json"))


def test_failed_sanity_check_is_not_cached_and_a_rerun_asks_again(tmp_artifacts, bbc, server):
    server.script = [(500, b"{}")] * 3  # the first three calls fail, then the endpoint recovers
    j = judge_at(server.url, tmp_artifacts / "cache")
    with pytest.raises(JudgeError, match="answered 7 of 10"):
        interp.ensure_sanity("smoke", j, n=10)
    partial = interp.ensure_sanity("smoke", j, n=10, allow_partial=True)  # the 3 failed trials are asked again
    assert partial["n_missing"] == 0 and partial["n_answered"] == 10
    server.script = [(500, b"{}")] * 3
    part = interp.ensure_sanity("smoke", judge_at(server.url, tmp_artifacts / "c2"), n=10, seed=1,
                                allow_partial=True, min_answered=0.5)
    assert part["n_missing"] == 3 and part["n_answered"] == 7
    assert [t["correct"] for t in part["trials"][:3]] == [None] * 3  # missing, not wrong
    assert part["accuracy"] == sum(t["correct"] is True for t in part["trials"]) / 7
    hits = server.hits
    again = interp.ensure_sanity("smoke", judge_at(server.url, tmp_artifacts / "c2"), n=10, seed=1)
    assert server.hits == hits + 3 and again["n_missing"] == 0  # only the missing trials are asked again
    assert summary_table({}, part)["sanity_n_missing"].item() == 3


# --------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_at_once_naming_the_url(tmp_artifacts, bbc, server, status):
    server.script = [(status, b'{"error": {"message": "invalid key"}}')]
    with pytest.raises(JudgeAuthError) as e:
        interp.ensure_sanity("smoke", judge_at(server.url, tmp_artifacts / "cache"), n=10)
    assert server.hits == 1 and f"{server.url}/chat/completions" in str(e.value)
    assert f"HTTP {status}" in str(e.value) and "OPENAI_API_KEY" in str(e.value)


# --------------------------------------------------------------------------- cache key
def test_cache_and_sanity_file_are_keyed_by_endpoint(tmp_artifacts, bbc, server):
    other = FakeChatServer(lambda p: "2" if p["messages"][0]["content"] == PICK_SYSTEM else healthy(p))
    try:
        cache = tmp_artifacts / "cache"
        a = interp.ensure_sanity("smoke", judge_at(server.url, cache), n=6)
        b = interp.ensure_sanity("smoke", judge_at(other.url, cache), n=6)
        assert server.hits == 6 and other.hits == 6  # same model and requests, other endpoint: asked again
        assert [t["choice"] for t in a["trials"]] == [0] * 6 and [t["choice"] for t in b["trials"]] == [1] * 6
        assert len(list(tmp_artifacts.rglob("judge_sanity/*.json"))) == 2
    finally:
        other.close()


# --------------------------------------------------------------------------- unparseable answers
def fuzz_garbled(payload: dict) -> str:
    """Explains and picks properly, but its fuzz answers for windows marking ' cat' are prose."""
    text = payload["messages"][-1]["content"]
    if "<< cat>>" in text and text.startswith("Description of the unit"):
        return "Hard to say, most of them look right."
    return healthy(payload)


def _score_features_0_and_2(judge, tmp_path) -> pd.DataFrame:
    """Score features 0 and 2 of the hand-built corpus (cached under ``tmp_path/scores``), indexed by feature."""
    tok, pos, acts, _ = corpus()
    kw = dict(out_dir=tmp_path / "scores", context_kwargs=CTX, show_progress=False)
    return score_features(IdentitySAE(), acts, tok, pos, [0, 2], np.full(3, 0.6), judge, decode,
                          **kw).set_index("feature")


def test_unparseable_fuzz_answers_are_missing_and_not_cached(tmp_path, server):
    server.answer = fuzz_garbled
    j = judge_at(server.url, tmp_path / "cache")
    df = _score_features_0_and_2(j, tmp_path)
    assert np.isnan(df.loc[0, "fuzz_score"]) and df.loc[0, "missing"]  # before: -1.0, scored as wrong
    assert df.loc[0, "fuzz_n_missing"] > 0 and not df.loc[2, "missing"] and np.isfinite(df.loc[2, "fuzz_score"])
    assert not (tmp_path / "scores" / "features" / "0.json").exists()  # never cached
    assert (tmp_path / "scores" / "features" / "2.json").exists()
    server.answer = healthy  # the endpoint is fixed: a re-run asks the missing ones again
    hits = server.hits
    df2 = _score_features_0_and_2(j, tmp_path)
    assert server.hits > hits and np.isfinite(df2.loc[0, "fuzz_score"]) and not df2.loc[0, "missing"]
    assert (tmp_path / "scores" / "features" / "0.json").exists()


# --------------------------------------------------------------------------- answered share and missing counts
@pytest.fixture()
def stubbed_runs(tmp_artifacts, monkeypatch):
    """Two runs whose matching, activations and SAE come from the hand-built corpus (nothing trained)."""
    tok, pos, acts, _ = corpus()
    pairs = pd.DataFrame({"i": [0, 2], "j": [0, 2], "cosine": [0.9, 0.8]})
    monkeypatch.setattr(interp, "ensure_matching", lambda a, b: MatchResult(pairs, 3, 3, None, None))
    monkeypatch.setattr(interp, "load_cache", lambda p: SimpleNamespace(
        acts=lambda r: acts, token_ids=lambda r: tok, positions=lambda r: pos))
    monkeypatch.setattr(interp, "load_run", lambda run: IdentitySAE())
    monkeypatch.setattr(interp, "ensure_calibration", lambda run: SimpleNamespace(thresholds=np.full(3, 0.6)))
    monkeypatch.setattr(interp, "profile_decoder", lambda p: decode)
    p = tiny_profile()
    return Run.of(p, "solo"), Run.of(p, "joint-l0.3-s1")


def once_garbled(server: FakeChatServer):
    """Garbles each cat fuzz request the first time it is seen: the solo side gets prose, the joint side
    (same windows) gets answers."""
    seen: set[str] = set()

    def answer(payload):
        text = payload["messages"][-1]["content"]
        if text in seen:
            return healthy(payload)
        seen.add(text)
        return fuzz_garbled(payload)

    return answer


def test_too_few_answers_fail_unless_partial_and_the_summary_counts_missing_per_side(stubbed_runs, server):
    solo, joint = stubbed_runs
    server.answer = once_garbled(server)
    j = judge_at(server.url, None)
    kw = dict(context_kwargs=CTX, show_progress=False)
    with pytest.raises(JudgeError, match=r"answered 1 of 2 features of run solo .*at least 90%"):
        interp.compare_runs(solo, joint, None, j, **kw)
    server.answer = once_garbled(server)
    j = judge_at(server.url, None)
    per, summary = interp.compare_runs(solo, joint, None, j, allow_partial=True, **kw)
    assert summary["n_missing_solo"] == 1 and summary["n_missing_joint"] == 0
    assert summary["n_pairs"] == 1  # the pair with a missing side is not in the paired test
    assert per["fuzz_solo"].isna().sum() == 1 and per["fuzz_joint"].notna().all()
    row = summary_table(summary, interp.ensure_sanity("smoke", j, n=4, min_answered=0.5))
    assert row["n_missing_solo"].item() == 1 and row["n_missing_joint"].item() == 0
    # a re-run asks the missing feature again (it was not cached) and completes
    per2, summary2 = interp.compare_runs(solo, joint, None, j, **kw)
    assert summary2["n_missing_solo"] == 0 and summary2["n_pairs"] == 2 and summary2["n_new_features"] == 1


def test_min_answered_is_validated(stubbed_runs, server):
    solo, joint = stubbed_runs
    with pytest.raises(ValueError, match="min_answered"):
        interp.compare_runs(solo, joint, None, judge_at(server.url, None), context_kwargs=CTX, show_progress=False,
                            min_answered=1.5)


# --------------------------------------------------------------------------- the key never reaches an output
SECRET = "sk-test-0123456789abcdef"


def _echo_key(status: int) -> tuple[int, bytes]:
    """A server error whose text echoes the request's key, as some proxies do."""
    body = {"error": {"message": f"bad request with header Authorization: Bearer {SECRET}"}}
    return status, json.dumps(body).encode()


@pytest.mark.parametrize("status", [401, 500])
def test_an_echoed_key_is_redacted_from_errors_failures_and_logs(tmp_path, server, status, caplog):
    server.script = [_echo_key(status)] * 3
    judge = OpenAIJudge(model="fake-model", base_url=server.url, api_key=SECRET, cache_dir=tmp_path / "cache",
                        max_retries=0, timeout=5, max_workers=1, max_consecutive_failures=3)
    with pytest.raises((JudgeAuthError, JudgeError)) as e:
        for _ in range(3):
            judge.chat([{"role": "user", "content": "hi"}])
    assert server.auth[0] == f"Bearer {SECRET}"  # the key was sent, and echoed back
    seen = [str(e.value), repr(judge), judge.last_failure or "", str(judge.failures), str(dict(judge.stats)),
            caplog.text]
    assert not any(SECRET in text for text in seen)
    assert "<OPENAI_API_KEY>" in str(e.value)


def explain_garbled(payload: dict) -> str:
    """A judge that answers explanation requests with an empty message, and follows the rest."""
    if payload["messages"][0]["content"] == EXPLAIN_SYSTEM:
        return ""
    return healthy(payload)


def test_a_failed_explanation_leaves_the_feature_missing_and_uncached(tmp_path, server):
    server.answer = explain_garbled
    j = judge_at(server.url, tmp_path / "cache")
    df = _score_features_0_and_2(j, tmp_path)
    assert df["missing"].all() and df["fuzz_score"].isna().all()  # no explanation, no score
    assert not list((tmp_path / "scores" / "features").glob("*.json"))  # nothing cached
    server.answer = healthy
    df2 = _score_features_0_and_2(j, tmp_path)
    assert not df2["missing"].any() and np.isfinite(df2["fuzz_score"]).all()
    assert (tmp_path / "scores" / "features" / "0.json").exists()
