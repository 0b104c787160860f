"""Input the database cannot store is a 422 at the API, the same on SQLite and PostgreSQL.

PostgreSQL refuses the NUL character in text and in ``jsonb`` strings, and no driver can encode a lone UTF-16
surrogate (``"\\ud800"`` in JSON) as UTF-8; SQLite takes the first and fails on the second, so such input
used to be a 500 on PostgreSQL only. ``NaN`` and ``Infinity`` are not JSON (the standard has no such numbers),
and ``jsonb`` refuses them too.

:func:`reject_unstorable_input` is an app-wide dependency: it checks every ``/v1`` request's query and path
parameters, headers, JSON body (keys and values, at any depth) and form fields and file names, and raises
FastAPI's :class:`RequestValidationError`, so the client gets the usual 422 ``validation_error`` naming each
offending field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

__all__ = ["reject_unstorable_input", "unstorable"]

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
#: Errors reported per request (the first ones are enough to fix the request).
_MAX_ERRORS = 20


def _text_error(text: str) -> str | None:
    match = _BAD_TEXT.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return "text must not contain the NUL character (\\u0000), which the database cannot store"
    return f"text must be valid Unicode: a lone surrogate (\\u{ord(match.group()):04x}) cannot be stored"


def unstorable(value: Any, loc: tuple[str | int, ...]) -> Iterator[dict[str, Any]]:
    """Validation errors (``loc``, ``msg``, ``type``) of the parts of ``value`` no database can store."""
    if isinstance(value, str):
        message = _text_error(value)
        if message is not None:
            yield {"loc": loc, "msg": message, "type": "unstorable_text", "input": value[:100]}
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield {"loc": loc, "msg": "must be a finite number (NaN and Infinity are not JSON)",
                   "type": "finite_number", "input": str(value)}
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (message := _text_error(key)) is not None:
                yield {"loc": (*loc, key), "msg": f"key: {message}", "type": "unstorable_text", "input": key[:100]}
            yield from unstorable(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            yield from unstorable(item, (*loc, position))


def _errors(request: Request, body: Any, form: Any) -> Iterator[dict[str, Any]]:
    for name, value in request.path_params.items():
        yield from unstorable(value, ("path", name))
    for name, value in request.query_params.multi_items():
        yield from unstorable(name, ("query", name))
        yield from unstorable(value, ("query", name))
    for name, value in request.headers.items():
        yield from unstorable(value, ("header", name))
    if body is not None:
        yield from unstorable(body, ("body",))
    for name, value in form.multi_items() if form is not None else ():
        if isinstance(value, UploadFile):
            yield from unstorable(value.filename or "", ("body", name, "filename"))
        else:
            yield from unstorable(value, ("body", name))


async def reject_unstorable_input(request: Request) -> None:
    """422 ``validation_error`` for ``/v1`` input the database cannot store (see the module doc).

    FastAPI has parsed the body before dependencies run; ``request.json()`` and ``request.form()`` return that
    parse, so nothing is read twice.
    """
    if not request.url.path.startswith("/v1/"):
        return
    body = form = None
    if request.method in ("POST", "PUT", "PATCH"):
        content_type = request.headers.get("content-type", "")
        if "json" in content_type:
            try:
                body = await request.json()
            except ValueError:  # empty or not JSON: the route's own parsing reports it
                body = None
        elif content_type.startswith("multipart/form-data"):
            form = await request.form()
    errors = []
    for error in _errors(request, body, form):
        errors.append(error)
        if len(errors) >= _MAX_ERRORS:
            break
    if errors:
        raise RequestValidationError(errors)
