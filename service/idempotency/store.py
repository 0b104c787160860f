"""Storage of idempotency keys: claim a key for a request, store its response, replay it, expire it.

Each step commits in its own short transaction (separate from the request's session), so a concurrent request
with the same key sees the claim at once: the unique ``(tenant_id, key)`` index lets exactly one insert win on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.errors import Conflict, UnprocessableEntity
from service.models import IdempotencyRecord

__all__ = ["RETRY_AFTER_SECONDS", "IdempotencyStore", "StoredResponse"]

#: ``Retry-After`` of a 409 ``idempotency_request_in_progress``: most requests finish within a second.
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class StoredResponse:
    """The first response given to a key: replayed as is for retries."""

    status_code: int
    body: Any


class IdempotencyStore:
    """Keys of all tenants, remembered ``ttl`` seconds."""

    def __init__(self, session_factory: sessionmaker[Session], ttl: float) -> None:
        self.session_factory = session_factory
        self.ttl = ttl

    def _row(self, session: Session, tenant_id: uuid.UUID, key: str) -> IdempotencyRecord | None:
        return session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key
            )
        )

    @staticmethod
    def _judge(row: IdempotencyRecord, fingerprint: str) -> StoredResponse:
        if row.fingerprint != fingerprint:
            raise UnprocessableEntity(
                "this Idempotency-Key was already used for a different request; use a new key for a new request",
                code="idempotency_key_reused",
            )
        if row.response_status is None:
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry after it has finished "
                f"(Retry-After: {RETRY_AFTER_SECONDS} s)",
                code="idempotency_request_in_progress",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return StoredResponse(row.response_status, row.response_body)

    def begin(self, tenant_id: uuid.UUID, key: str, fingerprint: str) -> StoredResponse | None:
        """Claim ``key`` for this request (None), or return the stored response of an identical earlier one.

        Raises 422 ``idempotency_key_reused`` for another request under the same key and 409
        ``idempotency_request_in_progress`` while the first request is still running.
        """
        now = utcnow()
        with session_scope(self.session_factory) as session:
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now))
            session.commit()
            row = self._row(session, tenant_id, key)
            if row is not None:
                return self._judge(row, fingerprint)
            session.add(
                IdempotencyRecord(
                    tenant_id=tenant_id,
                    key=key,
                    fingerprint=fingerprint,
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=self.ttl),
                )
            )
            try:
                session.commit()
                return None
            except IntegrityError:
                session.rollback()
            row = self._row(session, tenant_id, key)
            if row is None:  # the winner failed and released the key in between
                raise Conflict(
                    "a request with this Idempotency-Key was being processed; retry",
                    code="idempotency_request_in_progress",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            return self._judge(row, fingerprint)

    def complete(self, tenant_id: uuid.UUID, key: str, status_code: int, body: Any) -> None:
        """Store the response of the request that claimed ``key``."""
        with session_scope(self.session_factory) as session:
            session.execute(
                update(IdempotencyRecord)
                .where(IdempotencyRecord.tenant_id == tenant_id, IdempotencyRecord.key == key)
                .values(response_status=status_code, response_body=body)
            )
            session.commit()

    def release(self, tenant_id: uuid.UUID, key: str) -> None:
        """Forget ``key`` (the request failed before producing a response worth replaying)."""
        with session_scope(self.session_factory) as session:
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.tenant_id == tenant_id,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.response_status.is_(None),
                )
            )
            session.commit()
