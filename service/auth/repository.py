"""Queries on tenants and API keys."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import APIKey, Tenant

__all__ = ["AuthRepository"]


class AuthRepository:
    """Data access for :class:`Tenant` and :class:`APIKey`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_tenant_by_name(self, name: str) -> Tenant | None:
        return self.session.scalar(select(Tenant).where(Tenant.name == name))

    def add_tenant(self, name: str) -> Tenant:
        tenant = Tenant(name=name)
        self.session.add(tenant)
        self.session.flush()
        return tenant

    def add_key(
        self,
        tenant: Tenant,
        key_hash: str,
        prefix: str,
        name: str = "",
        expires_at: dt.datetime | None = None,
    ) -> APIKey:
        api_key = APIKey(
            tenant_id=tenant.id, key_hash=key_hash, prefix=prefix, name=name, expires_at=expires_at
        )
        self.session.add(api_key)
        self.session.flush()
        return api_key

    def get_tenant_by_key_hash(self, key_hash: str) -> Tenant | None:
        """The tenant owning the (not revoked, not expired) key with this hash."""
        found = self.get_active_key(key_hash)
        return found[0] if found is not None else None

    def get_active_key(self, key_hash: str) -> tuple[Tenant, APIKey] | None:
        """The tenant and key row of a key that is neither revoked nor expired."""
        statement = (
            select(Tenant, APIKey)
            .join(APIKey, APIKey.tenant_id == Tenant.id)
            .where(
                APIKey.key_hash == key_hash,
                APIKey.revoked_at.is_(None),
                or_(APIKey.expires_at.is_(None), APIKey.expires_at > utcnow()),
            )
        )
        row = self.session.execute(statement).first()
        return (row[0], row[1]) if row is not None else None

    def list_keys(self, tenant_name: str | None = None) -> list[tuple[str, APIKey]]:
        """``(tenant name, key)`` of every key (of one tenant), oldest first."""
        statement = select(Tenant.name, APIKey).join(APIKey, APIKey.tenant_id == Tenant.id)
        if tenant_name is not None:
            statement = statement.where(Tenant.name == tenant_name)
        rows = self.session.execute(statement.order_by(APIKey.created_at, APIKey.id)).all()
        return [(row[0], row[1]) for row in rows]

    def find_keys(self, ident: str) -> list[APIKey]:
        """Keys whose prefix starts with ``ident`` or whose id is ``ident``."""
        statement = select(APIKey).where(APIKey.prefix.startswith(ident, autoescape=True))
        rows = list(self.session.scalars(statement))
        try:
            by_id = self.session.get(APIKey, uuid.UUID(ident))
        except ValueError:
            by_id = None
        if by_id is not None and by_id not in rows:
            rows.append(by_id)
        return rows

    def count_active_keys(self) -> int:
        return (
            self.session.scalar(select(func.count()).select_from(APIKey).where(APIKey.revoked_at.is_(None)))
            or 0
        )
