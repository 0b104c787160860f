"""The ``TenantDep`` dependency: every protected route gets the caller's tenant from its bearer key.

It runs on the event loop: a key verified in the last :data:`~service.auth.service.KEY_CACHE_SECONDS` costs a
hash and a dictionary lookup, with no thread hop and no database session; only a cache miss reads the key table,
in the thread pool with a short session of its own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth.service import CurrentTenant, authenticate, cached_tenant
from service.db import session_scope

__all__ = ["TenantDep", "get_tenant"]

_bearer = HTTPBearer(auto_error=False, description="API key made with `mpq keys create --tenant NAME`")


def _authenticate(request: Request, authorization: str | None) -> CurrentTenant:
    with session_scope(request.app.state.session_factory) as session:
        return authenticate(session, authorization)


async def get_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> CurrentTenant:
    """Resolve the caller's tenant or raise 401 (``_credentials`` only declares the scheme in OpenAPI)."""
    authorization = request.headers.get("authorization")
    tenant = cached_tenant(authorization)
    if tenant is not None:
        return tenant
    return await run_in_threadpool(_authenticate, request, authorization)


TenantDep = Annotated[CurrentTenant, Depends(get_tenant)]
