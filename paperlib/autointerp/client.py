"""Judge on any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, ...).

Standard library only (``urllib``). Model, base URL and key come from the arguments or from
``OPENAI_MODEL`` / ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; the key only travels in the
``Authorization`` header and never reaches a cache key, a cache file or a result. Requests run in
a thread pool. HTTP 429 / 5xx, timeouts and connection errors are retried with exponential
backoff (a numeric ``Retry-After`` is honoured); failed calls, malformed replies and unparseable
answers are counted in ``judge.stats`` / ``judge.failures`` and give None answers, never an
exception. Successful calls are cached on disk by their full request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from paperlib.autointerp.cache import DiskCache
from paperlib.autointerp.judge import JudgeItem, JudgeStats
from paperlib.autointerp.prompts import (
    activation_messages,
    binary_messages,
    explain_messages,
    parse_binary_list,
    parse_choice,
    parse_explanation,
    parse_number_list,
    pick_messages,
)

log = logging.getLogger(__name__)


class OpenAIJudge(JudgeStats):
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
                self.record("http_requests")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    body = resp.read()
                break
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    self.record(f"http_{e.code}")
                    ra = e.headers.get("Retry-After") if e.headers else None
                    if ra and ra.strip().replace(".", "", 1).isdigit():
                        delay = min(self.max_backoff, float(ra))
                else:
                    self.record_failure("http_error", f"HTTP {e.code}: {e.read()[:200]!r}")
                    return None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                self.record("transport_errors")
                log.info("judge transport error (attempt %d): %s", attempt, e)
            if attempt < self.max_retries:
                time.sleep(delay)
        else:
            self.record_failure("gave_up", f"no success after {self.max_retries + 1} attempts")
            return None
        try:
            reply = json.loads(body)
            content = reply["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            self.record_failure("malformed_reply", f"{e}: {body[:200]!r}")
            return None
        return {"content": content}

    def chat(self, messages: list[dict], max_tokens: int | None = None) -> str | None:
        """One chat completion (cached); None if the call failed or the reply was malformed."""
        request = {"messages": messages, "temperature": self.temperature,
                   "max_tokens": max_tokens or self.max_tokens}
        key = self.cache.key(self.backend, self.model, request)
        hit = self.cache.get(key)
        if hit is not None:
            self.record("cache_hits")
            return hit["content"]
        out = self._post({"model": self.model, **request})
        self.record("calls")
        if out is None:
            return None
        self.cache.put(key, request, out)
        return out["content"]

    def chat_many(self, message_lists: Sequence[list[dict]], max_tokens: int | None = None,
                  ) -> list[str | None]:
        """:meth:`chat` for each message list, in a thread pool of ``max_workers``."""
        if len(message_lists) <= 1 or self.max_workers <= 1:
            return [self.chat(m, max_tokens) for m in message_lists]
        with ThreadPoolExecutor(self.max_workers) as ex:
            return list(ex.map(lambda m: self.chat(m, max_tokens), message_lists))

    # -- Judge interface
    def explain(self, items: Sequence[JudgeItem]) -> str | None:
        r = self.chat(explain_messages(items))
        out = parse_explanation(r)
        if out is None and r is not None:
            self.record_failure("invalid_explanation", "no explanation in reply")
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
                    self.record_failure("invalid_answer", f"{task}: {r[:200]}")
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
                self.record_failure("invalid_answer", f"activations: {r[:200]}")
            out.append(vals)
        return out

    def pick(self, explanation: str, texts: Sequence[str]) -> int | None:
        r = self.chat(pick_messages(explanation, texts), 8)
        k = parse_choice(r, len(texts))
        if k is None and r is not None:
            self.record_failure("invalid_answer", "pick")
        return k
