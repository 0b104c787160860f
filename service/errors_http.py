"""Mapping of every error to the one JSON shape ``{"error": {"code", "message", "details"}}``.

Domain errors keep their class's status; FastAPI's request validation errors become 422 ``validation_error``
with the offending fields; Starlette's HTTP errors (unknown route, wrong method) keep their status; anything
unexpected is a 500 ``internal_error`` whose details are logged, not returned.

Every error response carries a correlation id: the ``X-Request-ID`` header (the client's own, when it sent a
sane one) and ``details.request_id``; the server log has the same id. Messages and details go through a
:class:`~service.redact.Redactor`, so no server path or traceback reaches a tenant.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import MPQError
from service.redact import Redactor

__all__ = ["install_error_handlers", "request_id"]

logger = logging.getLogger("mpq.service")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def request_id(request: Request) -> str:
    """The request's correlation id: the client's ``X-Request-ID`` when it is sane, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _redactor(request: Request) -> Redactor:
    settings = getattr(request.app.state, "settings", None)
    if settings is None:
        return Redactor()
    return Redactor(roots=[(settings.artifact_dir, "<artifacts>"), (settings.data_root, "<data>")])


def _error(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    details = dict(details) if isinstance(details, dict) else ({} if details is None else {"value": details})
    headers = dict(headers or {})
    if request is not None:
        redactor = _redactor(request)
        message, details = redactor.text(message), redactor.value(details)
        correlation = request_id(request)
        details.setdefault("request_id", correlation)
        headers["X-Request-ID"] = correlation
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status, content=body, headers=headers or None)


def _clean(value: Any) -> Any:
    """Make validation-error context JSON-safe (it may hold exceptions, bytes or arbitrary objects)."""
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, str) and len(value) > 500:
            return value[:500] + "..."
        return value
    return str(value)[:500]


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")  # a validator's own sentence
        parts.append(f"{location}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(MPQError)
    async def _domain(request: Request, exc: MPQError) -> JSONResponse:
        headers = {**({"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}), **exc.headers}
        return _error(exc.status_code, exc.code, exc.message, _clean(exc.details), headers, request)

    try:  # the solver's input rules (non-finite budgets or costs...) are the client's to fix: 422, not 500
        from solver import SolverInputError
    except ImportError:  # pragma: no cover - only without the solver package
        SolverInputError = None

    if SolverInputError is not None:

        @app.exception_handler(SolverInputError)
        async def _solver_input(request: Request, exc: Exception) -> JSONResponse:
            return _error(422, "invalid_problem", str(exc), request=request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        return _error(
            422, "validation_error", _validation_message(errors), {"errors": _clean(errors)}, request=request
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error" if exc.status_code < 500 else "internal_error")
        return _error(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None), request=request
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        correlation = request_id(request)
        logger.error(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.url.path,
            correlation,
            exc_info=exc,
        )
        response = _error(
            500,
            "internal_error",
            f"internal server error; the server log has the details under request id {correlation}",
            {"request_id": correlation},
            request=request,
        )
        response.headers["X-Request-ID"] = correlation
        return response
