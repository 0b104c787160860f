"""413 for oversized bodies names the setting that applies: MPQ_MAX_JSON_BODY_BYTES for JSON routes,
MPQ_MAX_UPLOAD_BYTES (its own value, not the cap with room for multipart framing) for uploads; announced and
streamed bodies alike."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .conftest import error_of
from .helpers import images_bytes, upload

JSON_LIMIT = 64 * 1024
UPLOAD_LIMIT = 100 * 1024


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        max_json_body_bytes=JSON_LIMIT,
        max_upload_bytes=UPLOAD_LIMIT,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _big_spec(size: int) -> bytes:
    return json.dumps({"name": "x", "model": {"name": "builtin:vit-digits", "arch_kwargs": {"pad": "a" * size}}}).encode()


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
def test_a_large_json_body_names_the_json_setting(client, tenant, streamed: bool) -> None:
    body = _big_spec(4 * JSON_LIMIT)
    content = iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if streamed else body
    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = client.post("/v1/jobs", headers=headers, content=content)
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "body_too_large"
    assert f"MPQ_MAX_JSON_BODY_BYTES={JSON_LIMIT}" in error["message"] and "MPQ_MAX_UPLOAD_BYTES" in error["message"]
    assert error["details"] == {"max_bytes": JSON_LIMIT, "setting": "MPQ_MAX_JSON_BODY_BYTES"}
    assert client.get("/v1/jobs", headers=tenant.headers).json()["data"] == []


def test_a_body_under_the_json_limit_is_read(client, tenant) -> None:
    response = client.post("/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"},
                           content=_big_spec(JSON_LIMIT // 2))
    assert response.status_code != 413, response.text


def test_a_large_upload_names_the_upload_setting_and_its_value(client, tenant) -> None:
    payload = images_bytes(n=100, size=16)
    assert len(payload) > UPLOAD_LIMIT + 64 * 1024  # beyond the cap the middleware enforces
    response = upload(client, tenant.headers, payload)
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "upload_too_large"
    assert f"MPQ_MAX_UPLOAD_BYTES={UPLOAD_LIMIT}" in error["message"]
    assert error["details"]["max_bytes"] == UPLOAD_LIMIT
