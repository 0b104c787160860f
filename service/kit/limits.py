"""ASGI middleware capping request bodies before they are parsed (uploads are spooled by the form parser).

A body announced (``Content-Length``) or streamed beyond the cap is answered with 413 in the service's error
shape without the rest being read; the application then sees a client disconnect.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimitMiddleware"]


class BodySizeLimitMiddleware:
    """Limit request bodies to ``upload_limit`` bytes on ``upload_paths`` and ``default_limit`` elsewhere."""

    def __init__(
        self, app: ASGIApp, *, upload_limit: int, default_limit: int, upload_paths: tuple[str, ...]
    ) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.default_limit = default_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope.get("path", "") in self.upload_paths else self.default_limit
        declared = next((value for key, value in scope.get("headers", []) if key == b"content-length"), None)
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False
            if too_big:
                await _reject(send, limit)
                return

        received = 0
        responded = False

        async def limited_receive() -> Message:
            nonlocal received, responded
            if responded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    responded = True
                    await _reject(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not responded:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _reject(send: Send, limit: int) -> None:
    body: dict[str, Any] = {
        "error": {
            "code": "upload_too_large",
            "message": f"request body exceeds the limit of {limit} bytes (MPQ_MAX_UPLOAD_BYTES for uploads)",
            "details": {"max_bytes": limit},
        }
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
