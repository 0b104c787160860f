"""Uploads: safetensors only (pickles and other files refused, never loaded), shape/dtype checks, size limit,
content addressing, and nothing left behind by a rejected upload."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from .conftest import error_of, files_under, row_counts
from .helpers import images_bytes, raw_pickle_bytes, tiny_vit_weights, torch_checkpoint_bytes, upload


def test_upload_images_records_kind_tensors_and_sha(client, tenant, settings) -> None:
    payload = images_bytes(n=6)
    response = upload(client, tenant.headers, payload, name="calib.safetensors")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "images"
    assert body["sha256"] == hashlib.sha256(payload).hexdigest()
    assert body["size"] == len(payload)
    assert body["filename"] == "calib.safetensors"
    assert body["tensors"] == {
        "images": {"dtype": "F32", "shape": [6, 3, 32, 32], "nonfinite": False},
        "labels": {"dtype": "I64", "shape": [6], "nonfinite": False},
    }
    blob = Path(settings.artifact_dir) / "blobs" / body["sha256"][:2] / f"{body['sha256']}.safetensors"
    assert blob.read_bytes() == payload
    # Same bytes again: same artifact (content-addressed, one row per tenant).
    again = upload(client, tenant.headers, payload).json()
    assert again["id"] == body["id"]
    listed = client.get("/v1/artifacts", headers=tenant.headers, params={"kind": "images"}).json()
    assert [item["id"] for item in listed["data"]] == [body["id"]]


def test_upload_weights_is_kind_weights(client, tenant) -> None:
    response = upload(client, tenant.headers, tiny_vit_weights(), name="w.safetensors")
    assert response.status_code == 201
    assert response.json()["kind"] == "weights"
    assert "blocks.0.attn.qkv.weight" in response.json()["tensors"]


def _header_only(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


BAD_UPLOADS = {
    "torch-checkpoint": (torch_checkpoint_bytes(), None, 415, "not_safetensors", "pickles are never loaded"),
    "raw-pickle": (raw_pickle_bytes(), None, 415, "not_safetensors", "pickle"),
    "text-file": (b"hello, this is not a tensor file at all", None, 415, "not_safetensors", "safetensors"),
    "empty-file": (b"", None, 415, "not_safetensors", "too short"),
    "truncated": (images_bytes()[:-10], None, 422, "invalid_safetensors", "file truncated"),
    "bad-dtype": (
        _header_only({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        None,
        422,
        "invalid_safetensors",
        "unsupported dtype",
    ),
    "hole-in-buffer": (
        _header_only({"x": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}, b"\0\0"),
        None,
        422,
        "invalid_safetensors",
        "hole",
    ),
    "no-tensors": (save({}), None, 422, "invalid_artifact", "no tensors"),
    "images-wrong-rank": (save({"images": torch.zeros(4, 3, 32)}), None, 422, "invalid_images", "[N,3,H,W]"),
    "images-one-channel": (images_bytes(channels=1), None, 422, "invalid_images", "[N,3,H,W]"),
    "images-int-dtype": (
        save({"images": torch.zeros(2, 3, 8, 8, dtype=torch.int32)}),
        None,
        422,
        "invalid_images",
        "float",
    ),
    "labels-wrong-length": (
        save({"images": torch.zeros(4, 3, 8, 8), "labels": torch.zeros(3, dtype=torch.int64)}),
        None,
        422,
        "invalid_images",
        "must have shape [N] = [4]",
    ),
    "labels-float": (
        save({"images": torch.zeros(4, 3, 8, 8), "labels": torch.zeros(4)}),
        None,
        422,
        "invalid_images",
        "integer",
    ),
    "images-extra-tensor": (
        save({"images": torch.zeros(1, 3, 8, 8), "other": torch.zeros(1)}),
        None,
        422,
        "invalid_images",
        "unexpected",
    ),
    "declared-images-but-weights": (save({"w": torch.zeros(2)}), "images", 422, "invalid_images", "'images'"),
}


@pytest.mark.parametrize(
    ("payload", "kind", "status", "code", "message"), BAD_UPLOADS.values(), ids=BAD_UPLOADS
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client, tenant, session, settings, monkeypatch, payload, kind, status, code, message
) -> None:
    import safetensors.torch

    def forbidden(*_args, **_kwargs):
        raise AssertionError("an upload must never be loaded")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    before_files = files_under(Path(settings.artifact_dir))
    before_rows = row_counts(session, tenant.name)
    response = upload(client, tenant.headers, payload, kind=kind)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code
    assert message in error["message"]
    assert row_counts(session, tenant.name) == before_rows
    assert files_under(Path(settings.artifact_dir)) == before_files


def test_upload_over_the_limit_is_413(client, tenant, session, settings) -> None:
    before = files_under(Path(settings.artifact_dir))
    payload = images_bytes(n=400)  # ~4.9 MB > 4 MiB limit of the test settings
    assert len(payload) > settings.max_upload_bytes
    response = upload(client, tenant.headers, payload)
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "upload_too_large"
    assert str(settings.max_upload_bytes) in error["message"] or error["details"]["max_bytes"] > 0
    assert row_counts(session, tenant.name)["artifacts"] == 0
    assert files_under(Path(settings.artifact_dir)) == before


def test_upload_needs_a_file_field(client, tenant) -> None:
    response = client.post("/v1/artifacts", headers=tenant.headers, data={"kind": "images"})
    assert response.status_code == 422
    assert error_of(response)["code"] == "validation_error"
    assert "file" in error_of(response)["message"]


def test_unknown_kind_is_rejected(client, tenant) -> None:
    response = upload(client, tenant.headers, images_bytes(), kind="pickle")
    assert response.status_code == 422
    assert "kind" in error_of(response)["message"]
