"""API keys: ``mpq_`` + 43 random URL-safe characters, stored as a SHA-256 hash (never in clear).

Keys carry 256 bits of entropy, so a fast hash is enough (no password-style stretching needed); lookups are by
hash through a unique index.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.auth.repository import AuthRepository
from service.db import utcnow
from service.errors import NotFound, Unauthorized, UnprocessableEntity
from service.models import APIKey

__all__ = [
    "KEY_CACHE_SECONDS",
    "KEY_PREFIX",
    "CreatedKey",
    "CurrentTenant",
    "KeyInfo",
    "authenticate",
    "cached_tenant",
    "create_key",
    "ensure_local_key",
    "hash_key",
    "key_cache",
    "list_keys",
    "parse_duration",
    "revoke_key",
]

KEY_PREFIX = "mpq_"
LOCAL_TENANT = "local"


@dataclass(frozen=True)
class CurrentTenant:
    """The authenticated caller: a plain value (not an ORM object), safe to cache and share between threads."""

    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class CreatedKey:
    """A freshly made key: ``key`` is the only time the clear key exists."""

    tenant: str
    key: str
    prefix: str
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class KeyInfo:
    """What ``mpq keys list`` shows of a key (never the key itself)."""

    id: uuid.UUID
    tenant: str
    prefix: str
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def state(self) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> a timedelta; 422 ``invalid_duration`` otherwise."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise UnprocessableEntity(
            f"invalid duration {text!r}: give a positive number and a unit among s, m, h, d, w (e.g. 30d)",
            code="invalid_duration",
        )
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _validate_tenant_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise UnprocessableEntity("tenant name must be 1 to 100 characters", code="invalid_tenant")
    return name


def create_key(
    session: Session, tenant_name: str, *, key_name: str = "", expires_in: dt.timedelta | None = None
) -> CreatedKey:
    """Create a key for ``tenant_name`` (creating the tenant if needed) and commit; it stops working after
    ``expires_in`` when given."""
    tenant_name = _validate_tenant_name(tenant_name)
    repository = AuthRepository(session)
    tenant = repository.get_tenant_by_name(tenant_name) or repository.add_tenant(tenant_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:12]
    expires_at = utcnow() + expires_in if expires_in is not None else None
    repository.add_key(tenant, hash_key(key), prefix, key_name, expires_at)
    session.commit()
    return CreatedKey(tenant=tenant.name, key=key, prefix=prefix, expires_at=expires_at)


def list_keys(session: Session, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (of one tenant), oldest first, revoked and expired ones included."""
    return [
        KeyInfo(
            id=key.id,
            tenant=tenant,
            prefix=key.prefix,
            name=key.name,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
        )
        for tenant, key in AuthRepository(session).list_keys(tenant_name)
    ]


def revoke_key(session: Session, ident: str) -> APIKey:
    """Revoke the key whose id is ``ident`` or whose prefix starts with it (404 when none, 422 when several).

    Other API processes keep accepting it for at most :data:`KEY_CACHE_SECONDS`; this process forgets it at once.
    """
    ident = ident.strip()
    matches = AuthRepository(session).find_keys(ident) if len(ident) >= 6 else []
    if not matches:
        raise NotFound(f"no API key with id or prefix {ident!r} (see mpq keys list)", code="key_not_found")
    if len(matches) > 1:
        raise UnprocessableEntity(
            f"{len(matches)} keys start with {ident!r}; give more characters of the prefix or the key id",
            code="ambiguous_key",
        )
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    key_cache.clear()
    return key


def ensure_local_key(session: Session) -> CreatedKey | None:
    """For ``mpq serve``: when no key exists at all, create one for tenant ``local`` and return it."""
    if AuthRepository(session).count_active_keys() > 0:
        return None
    return create_key(session, LOCAL_TENANT, key_name="generated by mpq serve")


#: Seconds a verified key is cached by an API process: a revoked key stops working within this time.
KEY_CACHE_SECONDS = 10.0


class _KeyCache:
    """Recently verified key hashes -> tenant, kept ``ttl`` seconds (saves a query on every status poll).

    A revoked key keeps working for at most ``ttl`` seconds in processes that verified it just before; an
    expiring key is never served from the cache past its expiry.
    """

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, size: int = 1024) -> None:
        self.ttl, self.size = ttl, size
        self.entries: dict[str, tuple[float, CurrentTenant, dt.datetime | None]] = {}
        self.lock = threading.Lock()

    def get(self, key_hash: str) -> CurrentTenant | None:
        with self.lock:
            entry = self.entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        if entry[2] is not None and entry[2] <= utcnow():
            return None
        return entry[1]

    def put(self, key_hash: str, tenant: CurrentTenant, expires_at: dt.datetime | None = None) -> None:
        with self.lock:
            if len(self.entries) >= self.size:
                self.entries.clear()
            self.entries[key_hash] = (time.monotonic() + self.ttl, tenant, expires_at)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


key_cache = _KeyCache()


def _key_hash(authorization: str | None) -> str:
    """The stored form of the key in an ``Authorization: Bearer <key>`` header value; 401 when malformed."""
    if not authorization:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' (make one with mpq keys create)"
        )
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return hash_key(key)


def cached_tenant(authorization: str | None) -> CurrentTenant | None:
    """The tenant of a recently verified key without touching the database (None: ask :func:`authenticate`);
    401 for a missing or malformed header."""
    return key_cache.get(_key_hash(authorization))


def authenticate(session: Session, authorization: str | None) -> CurrentTenant:
    """The tenant of an ``Authorization: Bearer <key>`` header value; 401 otherwise."""
    key_hash = _key_hash(authorization)
    cached = key_cache.get(key_hash)
    if cached is not None:
        return cached
    found = AuthRepository(session).get_active_key(key_hash)
    if found is None:
        raise Unauthorized("invalid, revoked or expired API key (make a new one with mpq keys create)")
    row, api_key = found
    tenant = CurrentTenant(id=row.id, name=row.name)
    key_cache.put(key_hash, tenant, api_key.expires_at)
    return tenant
