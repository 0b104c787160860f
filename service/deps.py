"""FastAPI dependencies shared by all domains: settings and the per-request database session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import session_scope
from service.settings import Settings

__all__ = ["SessionDep", "SettingsDep", "get_app_settings", "get_session"]


async def get_app_settings(request: Request) -> Settings:
    """The settings the running app was created with (async: read on the event loop, no thread hop)."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; services commit explicitly, anything uncommitted is rolled back."""
    with session_scope(request.app.state.session_factory) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
