"""Typed exceptions of the client: one class per HTTP status family and per notable error ``code``.

Every error response of the API is ``{"error": {"code", "message", "details"}}``; :func:`error_for` picks the
most specific class (by ``code``, else by status) so callers can ``except JobNotFound`` or ``except
IdempotencyKeyReused`` instead of parsing strings.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ChecksumMismatch",
    "ConflictError",
    "IdempotencyKeyReused",
    "IdempotencyRequestInProgress",
    "JobNotFinished",
    "JobNotFound",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "error_for",
]


class APIError(Exception):
    """An error response of the API."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message, self.details = status_code, code, message, details


class BadRequestError(APIError):
    """400."""


class AuthenticationError(APIError):
    """401: missing, invalid, revoked or expired API key."""


class NotFoundError(APIError):
    """404 (also for resources of other tenants)."""


class JobNotFound(NotFoundError):
    """404 ``job_not_found``."""


class ConflictError(APIError):
    """409: the resource's state forbids the request."""


class JobNotFinished(ConflictError):
    """409 ``report_not_ready`` / ``artifact_not_ready``: the job has not succeeded (yet)."""


class IdempotencyRequestInProgress(ConflictError):
    """409 ``idempotency_request_in_progress``: retry after the first request has finished."""


class PayloadTooLargeError(APIError):
    """413."""


class ValidationError(APIError):
    """422: the request is invalid; ``message`` says what to fix."""


class IdempotencyKeyReused(ValidationError):
    """422 ``idempotency_key_reused``: the key was used for another request."""


class ServerError(APIError):
    """5xx."""


class ServiceUnavailableError(ServerError):
    """503."""


class ChecksumMismatch(APIError):
    """The downloaded bundle's sha256 differs from the one the server announced."""


_BY_CODE: dict[str, type[APIError]] = {
    "job_not_found": JobNotFound,
    "report_not_ready": JobNotFinished,
    "artifact_not_ready": JobNotFinished,
    "idempotency_request_in_progress": IdempotencyRequestInProgress,
    "idempotency_key_reused": IdempotencyKeyReused,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    503: ServiceUnavailableError,
}


def error_for(status_code: int, body: Any, text: str = "") -> APIError:
    """The exception for an error response (``body``: its parsed JSON, or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "http_error", "message": text[:500] or f"HTTP {status_code}"}
    code = str(error.get("code", "")) or "http_error"
    cls = (
        _BY_CODE.get(code) or _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else APIError)
    )
    return cls(status_code, code, str(error.get("message", "")), error.get("details"))
