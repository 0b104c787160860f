"""Mapping of every error to the one JSON shape ``{"error": {"code", "message", "details"}}``.

Domain errors keep their class's status; FastAPI's request validation errors become 422 ``validation_error``
with the offending fields; Starlette's HTTP errors (unknown route, wrong method) keep their status; anything
unexpected is a 500 ``internal_error`` whose details are logged, not returned.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.kit.errors import MPQError

__all__ = ["install_error_handlers"]

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


def _error(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details if details is not None else {}}}
    return JSONResponse(status_code=status, content=body, headers=headers)


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
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(MPQError)
    async def _domain(_request: Request, exc: MPQError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return _error(exc.status_code, exc.code, exc.message, _clean(exc.details), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        return _error(422, "validation_error", _validation_message(errors), {"errors": _clean(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error" if exc.status_code < 500 else "internal_error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal server error; see the server log")
