"""Cursor (keyset) pagination over ``(created_at, id)``, newest first.

A cursor is the opaque, URL-safe encoding of the last row of a page. The next page holds the rows strictly
older than it in ``(created_at desc, id desc)`` order, so rows inserted while a client pages (always newer)
never shift the pages: no row is seen twice and none is skipped, unlike offset paging.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from service.errors import UnprocessableEntity

__all__ = ["Cursor", "Page", "decode_cursor", "encode_cursor", "keyset_page"]

T = TypeVar("T")


class Cursor(BaseModel):
    """Position after a row: its creation time and id."""

    created_at: dt.datetime
    id: uuid.UUID


def encode_cursor(created_at: dt.datetime, row_id: uuid.UUID) -> str:
    """The opaque cursor pointing just after the row ``(created_at, row_id)``."""
    raw = json.dumps([created_at.astimezone(dt.UTC).isoformat(), str(row_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor made by :func:`encode_cursor`; 422 ``invalid_cursor`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, row_id = json.loads(raw)
        cursor = Cursor(created_at=created_at, id=row_id)
        if cursor.created_at.tzinfo is None:
            raise ValueError("naive time")
        return cursor
    except (ValueError, TypeError) as exc:
        raise UnprocessableEntity(
            "after: not a cursor returned by this API (pass next_cursor of the previous page)",
            code="invalid_cursor",
        ) from exc


class Page(Generic[T]):
    """Rows of one page, whether more follow, and the cursor of the next page."""

    def __init__(self, rows: list[T], has_more: bool, next_cursor: str | None) -> None:
        self.rows, self.has_more, self.next_cursor = rows, has_more, next_cursor


def keyset_page(
    session: Session,
    statement: Select[Any],
    created_col: InstrumentedAttribute[dt.datetime],
    id_col: InstrumentedAttribute[uuid.UUID],
    *,
    limit: int,
    after: str | None,
) -> Page[Any]:
    """Run ``statement`` (a filtered ``select(Model)``) for one page of at most ``limit`` rows after ``after``."""
    if after:
        cursor = decode_cursor(after)
        statement = statement.where(
            or_(created_col < cursor.created_at, and_(created_col == cursor.created_at, id_col < cursor.id))
        )
    rows = list(session.scalars(statement.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)))
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more and rows else None
    return Page(rows, has_more, next_cursor)
