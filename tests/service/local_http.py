"""``LocalHTTPServer``: the lifecycle shared by the tests' stand-in HTTP servers (receiver, proxy, recorded stream).

A subclass builds its request handler class and calls ``self.serve(handler)``; used as a context manager, the
server answers on ``self.url``'s host in a daemon thread and is shut down and closed on exit.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

__all__ = ["LocalHTTPServer"]


class LocalHTTPServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (``port`` 0: a free one), served while the context is open."""

    def serve(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        """Bind ``handler`` on 127.0.0.1:``port``; sets ``server``, ``port`` and ``base_url``."""
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)
