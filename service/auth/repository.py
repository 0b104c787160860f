"""Queries on tenants and API keys."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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

    def add_key(self, tenant: Tenant, key_hash: str, prefix: str, name: str = "") -> APIKey:
        api_key = APIKey(tenant_id=tenant.id, key_hash=key_hash, prefix=prefix, name=name)
        self.session.add(api_key)
        self.session.flush()
        return api_key

    def get_tenant_by_key_hash(self, key_hash: str) -> Tenant | None:
        """The tenant owning the (not revoked) key with this hash."""
        statement = (
            select(Tenant)
            .join(APIKey, APIKey.tenant_id == Tenant.id)
            .where(APIKey.key_hash == key_hash, APIKey.revoked_at.is_(None))
        )
        return self.session.scalar(statement)

    def count_active_keys(self) -> int:
        return (
            self.session.scalar(select(func.count()).select_from(APIKey).where(APIKey.revoked_at.is_(None)))
            or 0
        )
