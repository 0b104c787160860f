"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the database answers and is migrated)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.deps import SessionDep
from service.errors import ServiceUnavailable
from service.schemas import error_responses

__all__ = ["router"]

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: no dependencies checked."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: error_responses(503)[503]})
def readyz(session: SessionDep) -> Health:
    """Readiness: the database accepts a query and has the service's tables."""
    try:
        session.execute(text("SELECT 1 FROM alembic_version"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(
            f"database not ready: {type(exc).__name__}", code="database_unavailable"
        ) from exc
    return Health(status="ready")
