"""A real HTTP receiver on 127.0.0.1 for webhook tests: records every request, answers scripted statuses."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

from .local_http import LocalHTTPServer

__all__ = ["Receiver"]


class Receiver(LocalHTTPServer):
    """``statuses`` are answered in order (the last one repeats); ``received`` holds ``(headers, body)``."""

    def __init__(self, statuses: list[int] | None = None, port: int = 0) -> None:
        self.statuses = list(statuses or [200])
        self.received: list[tuple[dict[str, str], str]] = []
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                with receiver.got:
                    status = receiver.statuses[min(len(receiver.received), len(receiver.statuses) - 1)]
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.got.notify_all()
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: object) -> None:
                return

        self.serve(Handler, port)
        self.url = f"{self.base_url}/hook"

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until ``count`` requests arrived (True) or ``timeout`` seconds passed (False)."""
        with self.got:
            return self.got.wait_for(lambda: len(self.received) >= count, timeout=timeout)
