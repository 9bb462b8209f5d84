"""An offline OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests (no network, no model)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChatServer:
    """Answers ``POST <url>/chat/completions`` with ``answer(payload)``.

    ``script`` is a queue of (status, body) overrides taken one per request (error statuses carry
    ``retry-after-ms: 1`` so the client's retries are instant); ``hang=True`` makes every request wait
    without answering until the server closes (an endpoint that never answers). ``hits`` counts requests.
    """

    def __init__(self, answer=lambda payload: "[1, 0]", hang: bool = False):
        self.hits = 0
        self.script: list[tuple[int, bytes]] = []
        self.answer = answer
        self.hang = hang
        self.auth: list[str | None] = []
        self.payloads: list[dict] = []
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _respond(self, payload: dict, auth: str | None) -> tuple[int, bytes]:
        with self.lock:
            self.hits += 1
            self.auth.append(auth)
            self.payloads.append(payload)
            status, body = self.script.pop(0) if self.script else (200, None)
        if body is None:
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": self.answer(payload)}}]}).encode()
        return status, body

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if outer.hang:
                    with outer.lock:
                        outer.hits += 1
                    outer.closed.wait(30)
                    return
                status, body = outer._respond(payload, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status >= 400:
                    self.send_header("retry-after-ms", "1")
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
