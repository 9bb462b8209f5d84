"""Prompt text for the judges and parsers for their replies (docs/method.md §3.6).

Chat judges get a system prompt plus a user message built by the ``*_messages`` functions; the
``parse_*`` functions turn a reply into an answer, or None when the reply does not follow the
requested format. The likelihood judge writes nothing: it compares how likely a text is after
an explanation prefix and after a neutral prefix (:func:`likelihood_prefixes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from paperlib.autointerp.judge import CLOSE, OPEN, JudgeItem

# --------------------------------------------------------------------------- chat prompts
EXPLAIN_SYSTEM = (
    "You study what a single latent feature of a language model responds to.\n"
    f"You will see numbered text examples. In each, the tokens on which the latent is active are "
    f"wrapped in {OPEN} and {CLOSE}; a run of consecutive active tokens shares one pair of markers, "
    f"{OPEN}as here{CLOSE}.\n"
    "Work out what the marked tokens have in common (and, where it matters, the words around them) "
    "and describe it.\n"
    "Rules:\n"
    "- Describe the shared pattern in one short sentence. Do not enumerate the marked tokens and do "
    "not offer a list of alternative explanations.\n"
    "- Examples that fit no pattern can be ignored.\n"
    "- Do not refer to the markers themselves.\n"
    "- End your reply with a line of the form [EXPLANATION]: <your description>"
)

FUZZ_SYSTEM = (
    "You check descriptions of latent features of a language model.\n"
    "You will get the description of one latent (for instance \"male pronouns\" or \"text with "
    "negative sentiment\") and numbered text examples in which some tokens are wrapped in "
    f"{OPEN} and {CLOSE}.\n"
    "The markers are right in some examples and wrong in others; any mix is possible, including all "
    "right or all wrong. An example counts as right only if every marked token fits the description.\n"
    "Answer with a Python list holding, for each example in order, 1 if its markers are right and 0 "
    "if they are not. Reply with the list only."
)

DETECTION_SYSTEM = (
    "You check descriptions of latent features of a language model.\n"
    "You will get the description of one latent (for instance \"male pronouns\" or \"text with "
    "negative sentiment\") and numbered text examples; some of them contain the latent, some do not.\n"
    "Answer with a Python list holding, for each example in order, 1 if the text contains the latent "
    "and 0 if it does not. Reply with the list only."
)

ACTIVATION_SYSTEM = (
    "You check descriptions of latent features of a language model.\n"
    "You will get the description of one latent and a numbered list of tokens. For each token in "
    "order, estimate how strongly the latent fires on it, as an integer from 0 (not at all) to 10 "
    "(as strongly as it ever does).\n"
    "Reply only with a Python list of integers, exactly one per token."
)

PICK_SYSTEM = (
    "You will get a description and a few numbered texts. Reply only with the number of the text "
    "that fits the description best."
)


def explain_messages(items: Sequence[JudgeItem]) -> list[dict]:
    """Ask for an explanation of the highlighted example windows."""
    body = "\n".join(f"Example {i + 1}: {it.text()}" for i, it in enumerate(items))
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": body}]


def binary_messages(explanation: str, items: Sequence[JudgeItem], task: str) -> list[dict]:
    """Ask for one 0/1 answer per item; ``task`` is ``"fuzz"`` or ``"detection"``."""
    system = {"fuzz": FUZZ_SYSTEM, "detection": DETECTION_SYSTEM}[task]
    ex = "\n\n".join(f"Example {i}: {it.text()}" for i, it in enumerate(items))
    user = f"Latent explanation: {explanation}\n\nText examples:\n\n{ex}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def activation_messages(explanation: str, item: JudgeItem) -> list[dict]:
    """Ask for a 0–10 activation per token of ``item``."""
    toks = "\n".join(f"{i}\t{json.dumps(t)}" for i, t in enumerate(item.tokens))
    user = f"Latent explanation: {explanation}\n\nTokens ({len(item.tokens)}):\n{toks}"
    return [{"role": "system", "content": ACTIVATION_SYSTEM}, {"role": "user", "content": user}]


def pick_messages(explanation: str, texts: Sequence[str]) -> list[dict]:
    """Ask which of ``texts`` (numbered from 1) matches ``explanation``."""
    ex = "\n\n".join(f"Text {i + 1}: {t}" for i, t in enumerate(texts))
    user = f"Description: {explanation}\n\n{ex}\n\nAnswer with the number of the matching text."
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
    """The text after the last ``[EXPLANATION]:``; else the last non-empty line; None if empty."""
    if not reply:
        return None
    hits = re.findall(r"\[EXPLANATION\]\s*:?\s*(.+)", reply)
    if hits:
        out = hits[-1].strip()
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
