"""Placeholder router until the solver package lands (replaced in the next commit)."""

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["allocate"])
