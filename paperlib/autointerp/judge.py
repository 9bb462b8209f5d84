"""What every judge shares: the item shown to it, the interface, call statistics, rank decisions.

A judge reads text windows (:class:`JudgeItem`, highlighted tokens wrapped in ``<<``/``>>``) and
answers the auto-interp questions of docs/method.md §3.6. :func:`template_explanation` is the
explanation used when the judge model is too small to write one.

A judge that fails (no reply, an error, a reply that does not follow the format) gives a *missing*
answer (None), never a score: scorers turn missing answers into missing scores and nothing missing is
cached. :func:`check_answered` stops a run whose judge answered too little, and :class:`JudgeError`
is raised when a judge cannot work at all (refused credentials, an endpoint that keeps failing).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

OPEN, CLOSE = "<<", ">>"


@dataclass
class JudgeItem:
    """One text window shown to a judge: its token strings and which tokens are highlighted."""

    tokens: list[str]
    highlight: list[bool] | None = None

    def pieces(self) -> list[str]:
        """Token strings with ``<<``/``>>`` inserted around each run of highlighted tokens."""
        if self.highlight is None:
            return list(self.tokens)
        if len(self.highlight) != len(self.tokens):
            raise ValueError("highlight mask and tokens differ in length")
        out: list[str] = []
        inside = False
        for tok, h in zip(self.tokens, self.highlight, strict=True):
            if h and not inside:
                out.append(OPEN)
            if not h and inside:
                out.append(CLOSE)
            inside = bool(h)
            out.append(tok)
        if inside:
            out.append(CLOSE)
        return out

    def text(self) -> str:
        return "".join(self.pieces())


@runtime_checkable
class Judge(Protocol):
    """What the auto-interp scorers need from a judge.

    ``judge_binary`` returns one answer per item: True ("correctly highlighted" for
    ``task="fuzz"``, "contains the latent" for ``task="detection"``), False, or None when the
    judge's reply was invalid. ``n_positive`` is the number of positives the caller built into
    the batch (used only by rank-based judges). ``predict_activations`` returns per-token scores
    (None for an invalid reply). ``pick`` returns the index of the text that best matches the
    explanation (or None).
    """

    name: str
    stats: dict

    def explain(self, items: Sequence[JudgeItem]) -> str | None: ...

    def judge_binary(self, explanation: str, items: Sequence[JudgeItem], task: str,
                     n_positive: int | None = None) -> list[bool | None]: ...

    def predict_activations(self, explanation: str,
                            items: Sequence[JudgeItem]) -> list[list[float] | None]: ...

    def pick(self, explanation: str, texts: Sequence[str]) -> int | None: ...


class JudgeError(RuntimeError):
    """The judge cannot give answers (unreachable endpoint, refused credentials, too few answers): the run
    stops here instead of turning failures into results."""


class JudgeAuthError(JudgeError):
    """The endpoint refused the credentials (HTTP 401 / 403)."""


def judge_key(judge: Judge) -> str:
    """What identifies a judge's answers: its name, plus its endpoint when it has one
    (``openai-chat:model@http://host/v1``). Caches and result folders are keyed by it."""
    endpoint = getattr(judge, "endpoint", None)
    return judge.name if not endpoint else f"{judge.name}@{endpoint}"


def check_answered(judge: Judge, what: str, n_answered: int, n_total: int, min_answered: float = 0.9,
                   allow_partial: bool = False) -> None:
    """Raise :class:`JudgeError` when the judge answered less than ``min_answered`` of ``n_total``
    ``what`` (unless ``allow_partial``). The message names the judge, its endpoint and its last failure."""
    if not 0 < min_answered <= 1:
        raise ValueError(f"min_answered must be in (0, 1], got {min_answered!r}")
    if allow_partial or n_total == 0 or n_answered >= min_answered * n_total:
        return
    last = getattr(judge, "last_failure", "")
    cause = f"; last failure: {last}" if last else ""
    raise JudgeError(
        f"judge {judge_key(judge)} answered {n_answered} of {n_total} {what} (at least {min_answered:.0%} "
        f"needed){cause}. Check that the endpoint is up and serves the model, then re-run (only answers "
        "are cached, so the missing ones are asked again), or pass allow_partial=True to accept partial results.")


class JudgeStats:
    """Mix-in giving a judge thread-safe counters (``stats``) and a capped failure log (``failures``)."""

    max_failures = 1000

    def __init__(self) -> None:
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = Counter()
        self.failures: list[dict] = []
        self.last_failure = ""
        """Detail of the latest failure (kept beyond the cap of ``failures``)."""

    def record(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key``."""
        with self._stats_lock:
            self.stats[key] += n

    def record_failure(self, kind: str, detail: str) -> None:
        """Count a failure of ``kind``, keep its (truncated) detail and log a warning."""
        with self._stats_lock:
            self.stats[kind] += 1
            if len(self.failures) < self.max_failures:
                self.failures.append({"kind": kind, "detail": detail[:300]})
            self.last_failure = f"{kind}: {detail[:300]}"
        log.warning("judge %s: %s", kind, detail[:300])


_STOP = {"", "the", "a", "an", "of", "to", "and", "in", "on", "for", "is", "was", "that", "it",
         "with", "as", "at", "by", "be", "are", "from", "this", "'s"}


def template_explanation(items: Sequence[JudgeItem], n_tokens: int = 3, n_context: int = 2) -> str:
    """Explanation built from the top tokens: the most frequent highlighted tokens and the words
    that most often come right before them (when seen more than once)."""
    hl: Counter = Counter()
    before: Counter = Counter()
    for it in items:
        mask = it.highlight or [False] * len(it.tokens)
        for i, (tok, h) in enumerate(zip(it.tokens, mask, strict=True)):
            if not h:
                continue
            w = tok.strip()
            if w:
                hl[w] += 1
            if i > 0 and not mask[i - 1]:
                p = it.tokens[i - 1].strip()
                if p.lower() not in _STOP and re.search(r"\w", p):
                    before[p] += 1
    if not hl:
        return "unclear text patterns"
    words = [f'"{w}"' for w, _ in hl.most_common(n_tokens)]
    desc = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    out = f"the word{'s' if len(words) > 1 else ''} {desc}"
    ctx = [f'"{w}"' for w, c in before.most_common(n_context) if c > 1]
    if ctx:
        out += " after " + " or ".join(ctx)
    return out


def rank_decisions(scores: Sequence[float], n_positive: int | None = None) -> list[bool]:
    """True for the ``n_positive`` highest scores (default ``len // 2``); stable tie-breaking."""
    n = len(scores)
    k = n // 2 if n_positive is None else int(n_positive)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = [False] * n
    for idx in order[:k]:
        out[int(idx)] = True
    return out
