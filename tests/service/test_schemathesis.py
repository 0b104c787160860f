"""Property-based API test: schemathesis generates requests from /openapi.json and sends them with a valid key;
no response may be a 5xx or violate the documented schema (status codes, content types, bodies, headers).

It runs against SQLite and PostgreSQL (``backend_url``; in CI PostgreSQL must be there): PostgreSQL refuses
text SQLite stores (a NUL character), so only this run shows such input reaching the database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.auth.service import create_key
from service.settings import Settings

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_app(
    backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[object, dict[str, str]]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        Settings(
            database_url=backend_url,
            artifact_dir=root / "artifacts",
            embedded_worker=False,
            max_upload_bytes=1 << 20,
        )
    )
    with TestClient(app):
        with app.state.session_factory() as session:
            key = create_key(session, f"fuzz-{uuid.uuid4().hex[:8]}").key
        yield app, {"Authorization": f"Bearer {key}"}


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, read from the app's OpenAPI document."""
    document = create_app(Settings(embedded_worker=False)).openapi()
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    app, _headers = fuzz_app
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path"), _operations(), ids=[f"{m} {p}" for m, p in _operations()])
def test_api_conforms_to_its_schema(api_schema, fuzz_app, method: str, path: str) -> None:
    _app, headers = fuzz_app
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()
