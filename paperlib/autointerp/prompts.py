"""Prompt text for the judges and parsers for their replies (docs/method.md §3.6).

The scoring method follows Bills et al. (2023), who had a language model explain a unit from its top
activations and scored the explanation by simulating activations, and Paulo et al. (2024),
"Automatically Interpreting Millions of Features in Large Language Models" (the Delphi pipeline), for
fuzzing and detection scores. The wording below is this project's own.

Chat judges get a system prompt plus a user message built by the ``*_messages`` functions; the
``parse_*`` functions turn a reply into an answer, or None when the reply does not follow the
requested format (a missing answer, never a wrong one). The likelihood judge writes nothing: it
compares how likely a text is after an explanation prefix and after a neutral prefix
(:func:`likelihood_prefixes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from paperlib.autointerp.judge import CLOSE, OPEN, JudgeItem

# --------------------------------------------------------------------------- chat prompts
SUMMARY_TAG = "Summary:"
"""The line that carries the explanation in an explainer's reply."""

_UNIT = "a hidden unit (a sparse-autoencoder latent) of a language model"

EXPLAIN_SYSTEM = (
    f"Your job is to say what {_UNIT} detects.\n"
    "Below are numbered passages of text on which the unit was active. Inside each passage the tokens "
    f"where it was active are enclosed in {OPEN} and {CLOSE}; neighbouring active tokens share one pair, "
    f"{OPEN}like this{CLOSE}.\n"
    "Find the property the enclosed tokens share, using the nearby words when they matter. Passages that "
    "fit nothing may be ignored.\n"
    f"You may reason first, but end with one line that starts with \"{SUMMARY_TAG}\" followed by a short "
    "phrase naming that property: not a list of tokens, not several alternatives, and no mention of the "
    "brackets."
)

_LIST_ANSWER = "Answer with a single bracketed list of 0s and 1s, one entry per passage in the given order"

FUZZ_SYSTEM = (
    f"You will see a short description of {_UNIT} and numbered passages in which some tokens are "
    f"enclosed in {OPEN} and {CLOSE}.\n"
    "In some passages the enclosed tokens are where the unit was really active; in others they were "
    "picked at random. Any proportion is possible, from none of the passages to all of them.\n"
    "For each passage decide whether every enclosed token matches the description. "
    f"{_LIST_ANSWER} (1: the enclosed tokens match, 0: they do not), for example [1, 0, 0]. Write "
    "nothing else."
)

DETECTION_SYSTEM = (
    f"You will see a short description of {_UNIT} and numbered passages. Some passages contain what "
    "the unit responds to and some do not.\n"
    "For each passage decide whether it contains what the description names. "
    f"{_LIST_ANSWER} (1: it does, 0: it does not), for example [0, 1, 1]. Write nothing else."
)

ACTIVATION_SYSTEM = (
    f"You will see a short description of {_UNIT} and a passage split into numbered tokens. Guess how "
    "strongly the unit responds to each token, from 0 (silent) to 10 (its strongest response).\n"
    "Answer with a single bracketed list of whole numbers, one per token in order, for example "
    "[0, 0, 7, 2]. Write nothing else."
)

PICK_SYSTEM = (
    "You will see a description and a few numbered passages. Answer with the number of the passage "
    "the description fits best, and nothing else."
)


def explain_messages(items: Sequence[JudgeItem]) -> list[dict]:
    """Ask for an explanation of the highlighted example windows."""
    body = "\n".join(f"Passage {i + 1}: {it.text()}" for i, it in enumerate(items))
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": body}]


def binary_messages(explanation: str, items: Sequence[JudgeItem], task: str) -> list[dict]:
    """Ask for one 0/1 answer per item; ``task`` is ``"fuzz"`` or ``"detection"``."""
    system = {"fuzz": FUZZ_SYSTEM, "detection": DETECTION_SYSTEM}[task]
    ex = "\n\n".join(f"Passage {i + 1}: {it.text()}" for i, it in enumerate(items))
    user = f"Description of the unit: {explanation}\n\n{ex}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def activation_messages(explanation: str, item: JudgeItem) -> list[dict]:
    """Ask for a 0–10 activation per token of ``item``."""
    toks = "\n".join(f"{i + 1}\t{json.dumps(t)}" for i, t in enumerate(item.tokens))
    user = f"Description of the unit: {explanation}\n\n{len(item.tokens)} tokens:\n{toks}"
    return [{"role": "system", "content": ACTIVATION_SYSTEM}, {"role": "user", "content": user}]


def pick_messages(explanation: str, texts: Sequence[str]) -> list[dict]:
    """Ask which of ``texts`` (numbered from 1) matches ``explanation``."""
    ex = "\n\n".join(f"Passage {i + 1}: {t}" for i, t in enumerate(texts))
    user = f"Description: {explanation}\n\n{ex}\n\nWhich passage fits the description? Give its number."
    return [{"role": "system", "content": PICK_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- likelihood prefixes
EXPL_PREFIX = "The following text is about {explanation}.\n\n"
NEUTRAL_PREFIX = "The following text is a short excerpt.\n\n"
FUZZ_EXPL_PREFIX = (f"In the following text, the words related to {{explanation}} are marked with "
                    f"{OPEN} and {CLOSE}.\n\n")
FUZZ_NEUTRAL_PREFIX = f"In the following text, some words are marked with {OPEN} and {CLOSE}.\n\n"


def likelihood_prefixes(explanation: str, fuzz: bool) -> tuple[str, str]:
    """(explanation prefix, neutral prefix) for the likelihood judge; with ``fuzz`` both prefixes
    say that words are marked. A trailing full stop of the explanation is dropped."""
    e = explanation.strip().rstrip(".")
    if fuzz:
        return FUZZ_EXPL_PREFIX.format(explanation=e), FUZZ_NEUTRAL_PREFIX
    return EXPL_PREFIX.format(explanation=e), NEUTRAL_PREFIX


# --------------------------------------------------------------------------- reply parsers
def parse_explanation(reply: str | None) -> str | None:
    """The text after the last ``Summary:``; else the last non-empty line; None if empty."""
    if not reply:
        return None
    hits = re.findall(r"(?im)^\W*summary\W*:\s*(.+)", reply)
    if hits:
        out = hits[-1].strip().strip("*_ ")
    else:
        lines = [ln.strip() for ln in reply.strip().splitlines() if ln.strip()]
        out = lines[-1] if lines else ""
    return out or None


def parse_number_list(reply: str | None, n: int) -> list[float] | None:
    """The last ``[...]`` list of numbers in ``reply`` if it has exactly ``n`` entries, else None."""
    if not reply:
        return None
    lists = re.findall(r"\[([^\[\]]*)\]", reply)
    for body in reversed(lists):
        nums = re.findall(r"-?\d+(?:\.\d+)?", body)
        if len(nums) == n:
            return [float(x) for x in nums]
    return None


def parse_binary_list(reply: str | None, n: int) -> list[bool] | None:
    """Like :func:`parse_number_list`, but every entry must be 0 or 1."""
    vals = parse_number_list(reply, n)
    if vals is None or any(v not in (0.0, 1.0) for v in vals):
        return None
    return [v == 1.0 for v in vals]


def parse_choice(reply: str | None, n: int) -> int | None:
    """0-based index from the first number in ``reply`` (numbered from 1); None if out of range."""
    if not reply:
        return None
    m = re.search(r"\d+", reply)
    if not m:
        return None
    k = int(m.group()) - 1
    return k if 0 <= k < n else None
