"""ASGI middleware capping request bodies before they are parsed (uploads are spooled by the form parser).

A body announced (``Content-Length``) or streamed beyond the cap is answered with 413 in the service's error
shape without the rest being read; the application then sees a client disconnect. The message names the setting
that applies to the route: ``MPQ_MAX_UPLOAD_BYTES`` on upload routes (``upload_too_large``; their cap adds room
for the multipart framing, the message gives the setting's own value), ``MPQ_MAX_JSON_BODY_BYTES`` on every
other route (``body_too_large``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "BodySizeLimitMiddleware"]


@dataclass(frozen=True)
class BodyLimit:
    """A cap in bytes, and what a 413 says about it (the operator setting and its value)."""

    max_bytes: int
    setting: str
    setting_value: int
    code: str
    advice: str = ""

    def error(self) -> dict[str, Any]:
        """The 413 body."""
        return {
            "error": {
                "code": self.code,
                "message": (
                    f"request body too large: this route accepts at most {self.setting_value} bytes "
                    f"({self.setting}={self.setting_value}){self.advice}"
                ),
                "details": {"max_bytes": self.setting_value, "setting": self.setting},
            }
        }


class BodySizeLimitMiddleware:
    """Limit request bodies to ``upload`` on ``upload_paths`` and to ``default`` elsewhere."""

    def __init__(
        self, app: ASGIApp, *, upload: BodyLimit, default: BodyLimit, upload_paths: tuple[str, ...]
    ) -> None:
        self.app = app
        self.upload = upload
        self.default = default
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload if scope.get("path", "") in self.upload_paths else self.default
        declared = next((value for key, value in scope.get("headers", []) if key == b"content-length"), None)
        if declared is not None:
            try:
                too_big = int(declared) > limit.max_bytes
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
                if received > limit.max_bytes:
                    responded = True
                    await _reject(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not responded:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _reject(send: Send, limit: BodyLimit) -> None:
    payload = json.dumps(limit.error()).encode()
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
