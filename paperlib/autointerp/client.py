"""Judge on any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, ...).

Built on the ``openai`` client, which owns the transport: its ``timeout`` and ``max_retries``
(retries with exponential backoff on 408/409/429/5xx, timeouts and connection errors, honouring
``Retry-After``). Model, base URL and key come from the arguments or from ``OPENAI_MODEL`` /
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; the key only travels in the ``Authorization`` header and
never reaches a cache key, a cache file or a result.

Failures are never answers:

* HTTP 401 / 403 raise :class:`~paperlib.autointerp.judge.JudgeAuthError` at once, naming the URL;
* any other failed call, malformed reply or unparseable answer is a missing answer (None), counted in
  ``judge.stats`` / ``judge.failures``, and is not cached;
* ``max_consecutive_failures`` failed calls in a row raise :class:`~paperlib.autointerp.judge.JudgeError`
  naming the URL and the cause, so an endpoint that never answers stops the run quickly.

Valid answers are cached on disk, keyed by backend, model, endpoint and the full request.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import openai

from paperlib.autointerp.cache import DiskCache
from paperlib.autointerp.judge import JudgeAuthError, JudgeError, JudgeItem, JudgeStats
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

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _any(reply: str) -> bool:
    return True


def _parses(parser: Callable[[str, int], object], n: int) -> Callable[[str], bool]:
    """Check that ``parser(reply, n)`` finds an answer (what :meth:`OpenAIJudge.chat` caches)."""
    return lambda reply: parser(reply, n) is not None


class OpenAIJudge(JudgeStats):
    """Judge on an OpenAI-compatible chat-completions endpoint (see module docstring)."""

    backend = "openai-chat"

    def __init__(
        self, model: str | None = None, base_url: str | None = None, api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None, max_workers: int = 8, max_retries: int = 5,
        timeout: float = 120.0, temperature: float = 0.0, max_tokens: int = 512, batch_size: int = 5,
        max_consecutive_failures: int = 5,
    ):
        super().__init__()
        for name, value, low in (("timeout", timeout, 0), ("max_retries", max_retries, -1),
                                 ("max_consecutive_failures", max_consecutive_failures, 0)):
            if not value > low:
                raise ValueError(f"OpenAIJudge {name} must be > {low}, got {value!r}")
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ValueError("OpenAIJudge needs a model name (argument model or OPENAI_MODEL)")
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1"
        self.endpoint = base.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self._redact_key = key if len(key) >= 4 else ""  # shorter keys would redact ordinary words
        self.cache = DiskCache(cache_dir)
        self.max_workers, self.batch_size = max_workers, batch_size
        self.timeout, self.max_retries = timeout, max_retries
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_consecutive_failures = max_consecutive_failures
        self._in_a_row = 0
        self._row_lock = threading.Lock()
        local = (urllib.parse.urlparse(self.endpoint).hostname or "") in LOCAL_HOSTS
        self._client = openai.OpenAI(
            base_url=self.endpoint, api_key=key or "none", timeout=timeout, max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(trust_env=False) if local else None)

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    @property
    def base_url(self) -> str:
        return self.endpoint

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.endpoint!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced (a server may echo the request's headers in its error text, and
        failure details go to logs, exceptions and the stage's saved statistics)."""
        return text.replace(self._redact_key, "<OPENAI_API_KEY>") if self._redact_key else text

    # -- transport
    def _failed(self, kind: str, detail: str) -> None:
        """Record a failed call; too many in a row stop the run."""
        detail = self.redact(detail)
        self.record_failure(kind, detail)
        with self._row_lock:
            self._in_a_row += 1
            stop = self._in_a_row >= self.max_consecutive_failures
        if stop:
            raise JudgeError(
                f"judge endpoint {self.endpoint} (model {self.model!r}) failed {self.max_consecutive_failures} "
                f"calls in a row; last: {kind}: {detail[:300]}. Check that the server is up at this URL and "
                "serves this model, then re-run (answers already received are cached).")

    def _post(self, request: dict) -> str | None:
        """One completion; its text, or None after recording why there is none."""
        url = f"{self.endpoint}/chat/completions"
        self.record("http_requests")
        try:
            reply = self._client.chat.completions.create(model=self.model, **request)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise JudgeAuthError(
                f"judge endpoint {url} refused the credentials (HTTP {e.status_code}: "
                f"{self.redact(str(e))[:200]}). Set "
                "OPENAI_API_KEY (or api_key) to a key this server accepts for model "
                f"{self.model!r}.") from None
        except openai.APIStatusError as e:
            return self._failed("http_error", f"HTTP {e.status_code} from {url}: {str(e)[:200]}")
        except openai.APITimeoutError:
            return self._failed("timeout", f"no reply from {url} within {self.timeout:g} s "
                                           f"({self.max_retries + 1} attempts)")
        except openai.APIConnectionError as e:
            return self._failed("connection_error", f"cannot reach {url} ({self.max_retries + 1} attempts): "
                                                    f"{e.__cause__ or e}")
        except (openai.APIError, ValueError) as e:
            return self._failed("malformed_reply", f"from {url}: {type(e).__name__}: {str(e)[:200]}")
        return self._content(reply, url)

    def _content(self, reply, url: str) -> str | None:
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as e:
            return self._failed("malformed_reply", f"from {url}: {e}")
        if not isinstance(content, str):
            return self._failed("malformed_reply", f"from {url}: the reply has no text content")
        with self._row_lock:
            self._in_a_row = 0
        return content

    def chat(self, messages: list[dict], max_tokens: int | None = None,
             valid: Callable[[str], bool] = _any) -> str | None:
        """One chat completion; None when the call failed. Only replies that pass ``valid`` (the
        caller's parser) are cached, so a failed or unparseable answer is asked again next time."""
        request = {"messages": messages, "temperature": self.temperature,
                   "max_tokens": max_tokens or self.max_tokens}
        key = self.cache.key(self.backend, self.model, request, endpoint=self.endpoint)
        hit = self.cache.get(key)
        if hit is not None:
            self.record("cache_hits")
            return hit["content"]
        out = self._post(request)
        self.record("calls")
        if out is not None and valid(out):
            self.cache.put(key, request, {"content": out})
        return out

    def chat_many(self, message_lists: Sequence[list[dict]], max_tokens: int | None = None,
                  valids: Sequence[Callable[[str], bool]] | None = None) -> list[str | None]:
        """:meth:`chat` for each message list (with its own ``valids`` check), in a thread pool of
        ``max_workers``."""
        jobs = list(zip(message_lists, valids or [_any] * len(message_lists), strict=True))
        if len(jobs) <= 1 or self.max_workers <= 1:
            return [self.chat(m, max_tokens, v) for m, v in jobs]
        with ThreadPoolExecutor(self.max_workers) as ex:
            return list(ex.map(lambda job: self.chat(job[0], max_tokens, job[1]), jobs))

    def _invalid(self, reply: str | None, what: str) -> None:
        if reply is not None:  # failed calls were recorded by _post
            self.record_failure("invalid_answer", self.redact(f"{what}: {reply[:200]}"))

    # -- Judge interface
    def explain(self, items: Sequence[JudgeItem]) -> str | None:
        r = self.chat(explain_messages(items), valid=lambda x: parse_explanation(x) is not None)
        out = parse_explanation(r)
        if out is None:
            self._invalid(r, "explanation")
        return out

    def judge_binary(self, explanation: str, items: Sequence[JudgeItem], task: str,
                     n_positive: int | None = None) -> list[bool | None]:
        batches = [list(items[s:s + self.batch_size]) for s in range(0, len(items), self.batch_size)]
        valids = [_parses(parse_binary_list, len(b)) for b in batches]
        replies = self.chat_many([binary_messages(explanation, b, task) for b in batches], 64, valids)
        out: list[bool | None] = []
        for b, r in zip(batches, replies, strict=True):
            parsed = parse_binary_list(r, len(b))
            if parsed is None:
                self._invalid(r, task)
            out.extend([None] * len(b) if parsed is None else parsed)
        return out

    def predict_activations(self, explanation: str,
                            items: Sequence[JudgeItem]) -> list[list[float] | None]:
        valids = [_parses(parse_number_list, len(it.tokens)) for it in items]
        replies = self.chat_many([activation_messages(explanation, it) for it in items],
                                 max(64, 4 * max((len(it.tokens) for it in items), default=0)), valids)
        out = []
        for it, r in zip(items, replies, strict=True):
            vals = parse_number_list(r, len(it.tokens))
            if vals is None:
                self._invalid(r, "activations")
            out.append(vals)
        return out

    def pick(self, explanation: str, texts: Sequence[str]) -> int | None:
        r = self.chat(pick_messages(explanation, texts), 8, _parses(parse_choice, len(texts)))
        k = parse_choice(r, len(texts))
        if k is None:
            self._invalid(r, "pick")
        return k
