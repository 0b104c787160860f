"""The ``TenantDep`` dependency: every protected route gets the caller's tenant from its bearer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth.service import CurrentTenant, authenticate
from service.deps import SessionDep

__all__ = ["TenantDep", "get_tenant"]

_bearer = HTTPBearer(auto_error=False, description="API key made with `mpq keys create --tenant NAME`")


def get_tenant(
    request: Request,
    session: SessionDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> CurrentTenant:
    """Resolve the caller's tenant or raise 401 (``_credentials`` only declares the scheme in OpenAPI)."""
    return authenticate(session, request.headers.get("authorization"))


TenantDep = Annotated[CurrentTenant, Depends(get_tenant)]
