"""judge_sanity_check on a keyword judge; the BBC snippets are available offline."""

import numpy as np

from paperlib.autointerp.sanity import BBC_EXPLANATIONS, bbc_snippets, judge_sanity_check


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
    d = bbc_snippets()
    assert set(d) == {"business", "entertainment", "politics", "sports", "tech"}
    assert set(d) == set(BBC_EXPLANATIONS)
    assert all(len(v) > 300 for v in d.values())
