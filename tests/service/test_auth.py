"""API keys: Bearer auth on every non-health route, hashed storage, tenant isolation (404 for others' things)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from service.models import APIKey

from .conftest import error_of
from .helpers import images_bytes, upload

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/report"),
    ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/artifact"),
    ("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000/reallocate"),
    ("GET", "/v1/artifacts"),
    ("POST", "/v1/artifacts"),
    ("GET", "/v1/artifacts/00000000-0000-0000-0000-000000000000"),
    ("POST", "/v1/allocate"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize(
    "header",
    [None, "Bearer mpq_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["missing", "unknown-key", "basic-scheme", "empty-bearer"],
)
def test_protected_routes_need_a_valid_key(client, method, path, header) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "unauthorized"
    assert "key" in error["message"] or "Bearer" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_routes_are_open(client, path) -> None:
    assert client.get(path).status_code == 200


def test_keys_are_stored_hashed(client, tenant, session) -> None:
    stored = session.scalars(select(APIKey.key_hash)).all()
    assert hashlib.sha256(tenant.key.encode()).hexdigest() in stored
    assert tenant.key not in stored
    assert all(len(value) == 64 for value in stored)


def test_tenants_see_only_their_own_artifacts_and_jobs(client, make_tenant) -> None:
    alice, bob = make_tenant("alice"), make_tenant("bob")
    artifact = upload(client, alice.headers, images_bytes()).json()
    assert client.get(f"/v1/artifacts/{artifact['id']}", headers=alice.headers).status_code == 200
    response = client.get(f"/v1/artifacts/{artifact['id']}", headers=bob.headers)
    assert response.status_code == 404
    assert error_of(response)["code"] == "artifact_not_found"
    assert client.get("/v1/artifacts", headers=bob.headers).json()["data"] == []
    # Bob cannot use Alice's artifact in a job either: it does not exist for him.
    spec = {"model": {"name": "builtin:vit-digits"}, "data": {"artifact_id": artifact["id"]}}
    response = client.post("/v1/jobs", headers=bob.headers, json=spec)
    assert response.status_code == 404
    assert error_of(response)["code"] == "artifact_not_found"


def test_cli_keys_create_prints_a_working_key(client, settings, monkeypatch, capsys) -> None:
    from service.cli import main

    monkeypatch.setenv("MPQ_DATABASE_URL", settings.database_url)
    assert main(["keys", "create", "--tenant", "cli-tenant"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("mpq_") and len(key) > 40
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
