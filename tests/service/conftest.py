"""Fixtures of the service tests: migrated SQLite and PostgreSQL databases, an app client, tenants with keys.

PostgreSQL runs at 127.0.0.1:5432 (trust auth). Each test session works in its own uniquely named schema of
database ``test`` (``search_path`` set in the URL) and drops it at the end, so parallel runs do not clash.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from service.app import create_app
from service.auth.service import create_key
from service.db import make_engine, make_session_factory
from service.models import Artifact, Job, JobStage, Tenant
from service.settings import Settings
from tests.components import missing_component

from .mlflow_server import mlflow_server  # noqa: F401 - a fixture of the tracking tests

PG_SERVER = os.environ.get("MPQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_admin_engine():
    return create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server URL; skips PostgreSQL tests when the server cannot be reached."""
    try:
        engine = _pg_admin_engine()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        missing_component(f"PostgreSQL not reachable at {PG_SERVER}: {exc}")
    return PG_SERVER


def make_pg_schema_url(server: str) -> tuple[str, str]:
    """Create a fresh schema; return (url with search_path, schema name)."""
    schema = f"mpq_test_{uuid.uuid4().hex[:12]}"
    engine = _pg_admin_engine()
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{server}?options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    engine = _pg_admin_engine()
    with engine.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """An empty PostgreSQL schema for one test."""
    url, schema = make_pg_schema_url(pg_server)
    yield url
    drop_pg_schema(schema)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database of each backend, shared by one test module."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'mpq.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url, schema = make_pg_schema_url(server)
    yield url
    drop_pg_schema(schema)


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for in-process API tests: no worker process (jobs stay queued)."""
    root = tmp_path_factory.mktemp("artifacts")
    return Settings(
        database_url=backend_url,
        artifact_dir=root,
        embedded_worker=False,
        max_upload_bytes=4 * 1024 * 1024,
        data_root=None,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def session(client: TestClient) -> Iterator[Session]:
    with client.app.state.session_factory() as db_session:
        yield db_session


class TenantHandle:
    """A tenant made for one test, with its key's headers."""

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_tenant(client: TestClient):
    def _make(prefix: str = "t") -> TenantHandle:
        with client.app.state.session_factory() as db_session:
            created = create_key(db_session, f"{prefix}-{uuid.uuid4().hex[:8]}")
        return TenantHandle(created.tenant, created.key)

    return _make


@pytest.fixture
def tenant(make_tenant) -> TenantHandle:
    return make_tenant()


def row_counts(session: Session, tenant_name: str) -> dict[str, int]:
    """Rows a tenant owns (for 'nothing half-written' checks)."""
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
    jobs = select(Job.id).where(Job.tenant_id == tenant_id)
    return {
        "jobs": session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)) or 0,
        "stages": session.scalar(select(func.count()).select_from(JobStage).where(JobStage.job_id.in_(jobs)))
        or 0,
        "artifacts": session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.tenant_id == tenant_id)
        )
        or 0,
    }


def error_of(response: Any) -> dict[str, Any]:
    """The ``error`` object of an error response (asserting the one error shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


__all__ = [
    "TenantHandle",
    "drop_pg_schema",
    "error_of",
    "files_under",
    "make_engine",
    "make_pg_schema_url",
    "make_session_factory",
    "row_counts",
]
