"""JudgeItem markers, the Judge protocol, JudgeStats, rank decisions and template explanations."""

import threading

import pytest

from paperlib.autointerp.judge import Judge, JudgeItem, JudgeStats, rank_decisions, template_explanation


def test_judge_item_markers():
    assert JudgeItem(["a", "b", "c", "d"], [True, True, False, True]).text() == "<<ab>>c<<d>>"
    assert JudgeItem([" a", " cat"], [False, True]).text() == " a<< cat>>"
    assert JudgeItem([" a", " cat"]).pieces() == [" a", " cat"]
    assert JudgeItem(["x", "y"], [True, False]).pieces() == ["<<", "x", ">>", "y"]
    with pytest.raises(ValueError, match="differ in length"):
        JudgeItem(["x", "y"], [True]).pieces()


def test_rank_decisions_and_template():
    assert rank_decisions([0.1, 3.0, -1.0, 2.0]) == [False, True, False, True]
    assert rank_decisions([1, 2, 3], n_positive=1) == [False, False, True]
    assert rank_decisions([1.0, 1.0, 1.0, 1.0]) == [True, True, False, False]  # stable ties
    items = [JudgeItem([" the", " big", " cat"], [False, False, True]),
             JudgeItem([" a", " big", " cat"], [False, False, True]),
             JudgeItem([" one", " dog"], [False, True])]
    assert template_explanation(items) == 'the words "cat" and "dog" after "big"'
    assert template_explanation([JudgeItem([" x"])]) == "unclear text patterns"


class Recorder(JudgeStats):
    name = "recorder"


def test_judge_stats_counts_and_caps_failures():
    r = Recorder()
    threads = [threading.Thread(target=lambda: [r.record("calls") for _ in range(500)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.stats["calls"] == 2000
    r.max_failures = 3
    for i in range(5):
        r.record_failure("invalid_answer", f"reply {i} " + "x" * 400)
    assert r.stats["invalid_answer"] == 5 and len(r.failures) == 3
    assert r.failures[0]["kind"] == "invalid_answer" and len(r.failures[0]["detail"]) == 300


def test_protocol_is_structural():
    class Minimal:
        name = "m"
        stats: dict = {}

        def explain(self, items):
            return None

        def judge_binary(self, explanation, items, task, n_positive=None):
            return []

        def predict_activations(self, explanation, items):
            return []

        def pick(self, explanation, texts):
            return None

    assert isinstance(Minimal(), Judge)
    assert not isinstance(Recorder(), Judge)
