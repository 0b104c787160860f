"""A real HTTP reverse proxy on 127.0.0.1 that can drop response headers and corrupt response bodies, to test
what a client does behind a misbehaving proxy or cache."""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import httpx

from .local_http import LocalHTTPServer

__all__ = ["TamperingProxy", "flip_byte"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def flip_byte(body: bytes, position: int = 100) -> bytes:
    """``body`` with the bits of one byte inverted."""
    position = min(position, len(body) - 1)
    return body[:position] + bytes([body[position] ^ 0xFF]) + body[position + 1 :]


class TamperingProxy(LocalHTTPServer):
    """Forwards every request to ``upstream``; on responses whose path ends with ``tamper_suffix`` it removes
    ``strip`` headers and passes the body through ``corrupt``. ``tampered`` counts the responses it changed."""

    def __init__(
        self,
        upstream: str,
        *,
        strip: tuple[str, ...] = (),
        corrupt: Callable[[bytes], bytes] | None = None,
        tamper_suffix: str = "/artifact",
    ) -> None:
        self.tampered = 0
        proxy = self
        client = httpx.Client(base_url=upstream, timeout=60)
        self.client = client

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("content-length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
                response = client.request(self.command, self.path, headers=headers, content=body)
                content = response.content
                drop = {name.lower() for name in strip}
                if self.path.split("?")[0].endswith(tamper_suffix):
                    proxy.tampered += 1
                    if corrupt is not None:
                        content = corrupt(content)
                else:
                    drop = set()
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() not in drop:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = do_PATCH = _forward

            def log_message(self, *_args: object) -> None:
                return

        self.serve(Handler)
        self.url = self.base_url

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.client.close()
