"""An offline explainer that reads context: the firing tokens plus the words that distinguish the text
before them (docs/method.md §3.6).

The local judge (a 135M model) cannot write explanations, and a list of firing tokens cannot tell two
latents apart that fire on the same token in different senses ("bank" after "river" vs after
"interest"). :class:`ContextExplainer` therefore adds, to the most frequent highlighted tokens, the
words of the ``n_before`` tokens preceding each highlighted run that are over-represented in this latent's
top windows relative to the token range as a whole: a word's weight is the number of windows it occurs
in times its inverse background frequency, log(N / (count + 1)). Words seen in fewer than ``min_windows``
windows, stop words, special tokens and tokens without a letter or digit are skipped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from paperlib.autointerp.judge import JudgeItem

STOP_WORDS = frozenset(
    "the a an of to and in on for is was that it with as at by be are from this 's or but not have has had "
    "he she they we i you his her their its our your them him were been will would can could said says "
    "there which who what when all one so if than then also into out up about more".split())


def _word(tok: str) -> str | None:
    """The token as a word, or None for whitespace, punctuation and special tokens (``<|...|>``)."""
    w = tok.strip()
    return w if w and re.search(r"[A-Za-z0-9]", w) and not re.fullmatch(r"<\|.*\|>", w) else None


def _quote(words: Sequence[str], last: str) -> str:
    q = [f'"{w}"' for w in words]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" {last} " + q[-1]


class ContextExplainer:
    """Explanation = top highlighted tokens + distinctive preceding words (see module docstring).

    ``background`` maps a token string to its count in a reference token range (e.g. the whole
    auto-interp range); an empty mapping weights every word equally.
    """

    def __init__(self, background: Mapping[str, int], n_tokens: int = 3, n_context: int = 3, n_before: int = 8,
                 min_windows: int = 2):
        for name, v in (("n_tokens", n_tokens), ("n_context", n_context), ("n_before", n_before),
                        ("min_windows", min_windows)):
            if int(v) != v or v < 1:
                raise ValueError(f"ContextExplainer {name} must be an integer >= 1, got {v!r}")
        self.background = {k.strip().lower(): int(v) for k, v in background.items()}
        self.total = max(1, sum(self.background.values()))
        self.n_tokens, self.n_context, self.n_before, self.min_windows = n_tokens, n_context, n_before, min_windows
        self.stats: dict = Counter()

    @property
    def name(self) -> str:
        return f"context-explainer:t{self.n_tokens}-c{self.n_context}-b{self.n_before}-m{self.min_windows}"

    def weight(self, word: str) -> float:
        """Inverse background frequency of ``word``: log(N / (count + 1)), at least 0."""
        return max(0.0, math.log(self.total / (self.background.get(word.lower(), 0) + 1)))

    def _counts(self, items: Sequence[JudgeItem]) -> tuple[Counter, Counter]:
        fired: Counter = Counter()
        before: Counter = Counter()
        for it in items:
            mask = it.highlight or [False] * len(it.tokens)
            seen: set[str] = set()
            for i, (tok, h) in enumerate(zip(it.tokens, mask, strict=True)):
                if not h:
                    continue
                w = _word(tok)
                if w:
                    fired[w] += 1
                if i == 0 or mask[i - 1]:
                    continue
                for prev in it.tokens[max(0, i - self.n_before):i]:
                    p = _word(prev)
                    if p and p.lower() not in STOP_WORDS:
                        seen.add(p)
            before.update(seen)
        return fired, before

    def explain(self, items: Sequence[JudgeItem]) -> str | None:
        """The explanation of the highlighted windows ``items`` (never None)."""
        fired, before = self._counts(items)
        if not fired:
            return "unclear text patterns"
        top = [w for w, _ in fired.most_common(self.n_tokens)]
        out = f"the word{'s' if len(top) > 1 else ''} {_quote(top, 'and')}"
        skip = {w.lower() for w in top}
        ranked = sorted(((c * self.weight(w), w) for w, c in before.items()
                         if c >= self.min_windows and w.lower() not in skip), key=lambda x: (-x[0], x[1]))
        ctx = [w for s, w in ranked[:self.n_context] if s > 0]
        if ctx:
            out += f" in text with {_quote(ctx, 'or')} shortly before"
        return out
