"""On-disk cache of judge calls, so an interrupted run resumes and a re-run costs nothing.

One JSON file per request (request and response), named by the sha256 of (backend, model,
endpoint, request) and written atomically; a small in-memory layer sits in front of it. Callers store
only valid answers: a failed call or an unparseable reply is never put here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from paperlib.config.io import write_json


class DiskCache:
    """JSON cache: one file per request, keyed by sha256 of (backend, model, endpoint, request).

    ``root=None`` keeps only the in-memory layer (at most ``memory_items`` entries, oldest dropped).
    """

    def __init__(self, root: str | os.PathLike | None, memory_items: int = 4096):
        self.root = None if root is None else Path(root)
        self._mem: dict[str, Any] = {}
        self._mem_items = memory_items
        self._lock = threading.Lock()

    @staticmethod
    def key(backend: str, model: str, request: Any, endpoint: str | None = None) -> str:
        """Cache key of ``request`` sent to ``model`` of ``backend`` at ``endpoint`` (None for an
        in-process judge, whose keys then stay what they were before endpoints were keyed)."""
        what = {"backend": backend, "model": model, "request": request}
        if endpoint is not None:
            what["endpoint"] = endpoint
        blob = json.dumps(what, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> Path:
        """File of ``key`` (needs a root)."""
        if self.root is None:
            raise ValueError("this cache has no directory")
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The cached response, or None (also for an unreadable file)."""
        with self._lock:
            if key in self._mem:
                return self._mem[key]
        if self.root is None:
            return None
        p = self.path(key)
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
            write_json(self.path(key), {"request": request, "response": response})
