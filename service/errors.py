"""The domain exception tree. Services raise these; one handler in :mod:`service.app` maps them to HTTP.

Every error reaches the client as ``{"error": {"code": ..., "message": ..., "details": ...}}`` with the status
code of its class. ``code`` is a stable machine-readable string, ``message`` says what to fix.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "MPQError",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
]


class MPQError(Exception):
    """Base of all errors the API reports on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details if details is not None else {}
        #: Response headers the error comes with (e.g. ``Retry-After``).
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The body of the error response."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(MPQError):
    status_code = 400
    code = "bad_request"


class Unauthorized(MPQError):
    status_code = 401
    code = "unauthorized"


class Forbidden(MPQError):
    status_code = 403
    code = "forbidden"


class NotFound(MPQError):
    status_code = 404
    code = "not_found"


class Conflict(MPQError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(MPQError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(MPQError):
    status_code = 415
    code = "unsupported_media_type"


class UnprocessableEntity(MPQError):
    status_code = 422
    code = "invalid_input"


class ServiceUnavailable(MPQError):
    status_code = 503
    code = "service_unavailable"
