"""No response body, job error, report or bundle shows a server path or a traceback (issue 13).

Tenants get a code, a message and a correlation id (``X-Request-ID`` / ``details.request_id`` for requests, the
job id for jobs); tracebacks and real paths stay in the server log. Jobs run in-process with the worker's
``execute_job`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import zipfile
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.artifact.storage import BlobStore
from service.errors import UnprocessableEntity
from service.models import JobStatus

from .conftest import error_of
from .helpers import (
    TINY_VIT,
    TINY_VIT_IMAGE,
    TINY_VIT_KWARGS,
    images_bytes,
    run_job_here,
    tiny_vit_weights,
    upload,
)

TRACEBACK = "Traceback (most recent call last)"


def _leaks(text: str, settings) -> list[str]:
    """The forbidden fragments found in ``text``."""
    root = settings.artifact_dir
    fragments = {str(root), str(root.resolve()), "var/artifacts", "/work/", "/tmp/", "blobs/", TRACEBACK}
    return sorted(fragment for fragment in fragments if fragment and fragment in text)


def _assert_clean(value: Any, settings, what: str) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    assert _leaks(text, settings) == [], f"{what} leaks {_leaks(text, settings)}: {text[:2000]}"


@pytest.fixture
def inputs(client, tenant) -> dict[str, str]:
    weights = upload(client, tenant.headers, tiny_vit_weights()).json()["id"]
    calib = upload(client, tenant.headers, images_bytes(n=4, size=TINY_VIT_IMAGE, labels=False)).json()["id"]
    evaluation = upload(client, tenant.headers, images_bytes(n=6, size=TINY_VIT_IMAGE, seed=3)).json()["id"]
    return {"weights": weights, "calib": calib, "eval": evaluation}


def _spec(inputs: dict[str, str], **method: Any) -> dict[str, Any]:
    return {
        "model": {"name": TINY_VIT, "arch_kwargs": TINY_VIT_KWARGS, "weights_artifact_id": inputs["weights"]},
        "data": {
            "artifact_id": inputs["calib"],
            "eval_artifact_id": inputs["eval"],
            "num_calibration": 4,
            "batch_size": 4,
        },
        "method": {"quantizer": "minmax", "wbits": 8, "abits": 8, **method},
        "device": "cpu",
    }


def _blob(settings, client, tenant, artifact_id: str):
    sha = client.get(f"/v1/artifacts/{artifact_id}", headers=tenant.headers).json()["sha256"]
    return BlobStore(settings.artifact_dir).blob_path(sha)


def test_a_finished_job_its_report_and_bundle_show_no_server_path(client, tenant, settings, inputs) -> None:
    response = client.post(
        "/v1/jobs", headers=tenant.headers, json=_spec(inputs, reconstruct="mse", reconstruct_iters=2)
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert run_job_here(client, settings, job_id) == JobStatus.SUCCEEDED
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert job["status"] == "succeeded", job["error"]
    _assert_clean(job, settings, "GET /v1/jobs/{id}")
    export = next(stage for stage in job["stages"] if stage["name"] == "export")
    assert export["output"]["files"][:3] == ["model.safetensors", "quant_config.json", "report.json"]
    assert "path" not in export["output"]
    report = client.get(f"/v1/jobs/{job_id}/report", headers=tenant.headers)
    assert report.status_code == 200, report.text
    _assert_clean(report.json(), settings, "GET /v1/jobs/{id}/report")
    metrics = report.json()["result"]["metrics"]
    assert metrics["quantized"]["cross_entropy"] > 0 and metrics["float"]["cross_entropy"] > 0
    bundle = client.get(f"/v1/jobs/{job_id}/artifact", headers=tenant.headers)
    assert bundle.status_code == 200
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        for name in ("report.json", "report.html", "quant_config.json"):
            _assert_clean(archive.read(name).decode(), settings, f"bundle {name}")
        config = json.loads(archive.read("report.json"))["config"]
    sha = client.get(f"/v1/artifacts/{inputs['weights']}", headers=tenant.headers).json()["sha256"]
    assert config["model"]["weights_path"] == f"{sha}.safetensors"  # the blob by name only


def test_an_unexpected_crash_records_no_traceback_and_no_path(
    client, tenant, settings, inputs, monkeypatch, caplog
) -> None:
    import quant.pipeline

    blob = _blob(settings, client, tenant, inputs["weights"])

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f'cannot mmap {blob}\n{TRACEBACK}:\n  File "/work/main/quant/x.py", line 1')

    monkeypatch.setattr(quant.pipeline, "run_pipeline", crash)
    job_id = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=6)).json()["id"]
    with caplog.at_level(logging.ERROR, logger="mpq.worker"):
        assert run_job_here(client, settings, job_id) == JobStatus.FAILED
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert job["error"]["code"] == "internal_error"
    assert job["error"]["details"] == {"job_id": job_id}
    assert job_id in job["error"]["message"]
    _assert_clean(job, settings, "failed job")
    assert TRACEBACK in caplog.text and str(blob) in caplog.text  # the operator still sees everything


def test_an_input_error_in_the_worker_names_the_artifact_not_its_blob(
    client, tenant, settings, inputs, monkeypatch
) -> None:
    import quant.pipeline
    from quant.errors import PipelineInputError

    blob = _blob(settings, client, tenant, inputs["calib"])

    def bad_data(*_args: Any, **_kwargs: Any) -> None:
        raise PipelineInputError(
            "invalid_data", f"{blob} is not a readable safetensors file", {"file": str(blob)}
        )

    monkeypatch.setattr(quant.pipeline, "run_pipeline", bad_data)
    job_id = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=5)).json()["id"]
    assert run_job_here(client, settings, job_id) == JobStatus.FAILED
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert job["error"]["code"] == "invalid_data"
    assert job["error"]["message"] == f"artifact {inputs['calib']} is not a readable safetensors file"
    assert job["error"]["details"]["file"] == f"artifact {inputs['calib']}"
    _assert_clean(job, settings, "failed job")


def test_out_of_memory_fails_the_job_with_what_to_reduce_and_the_worker_lives_on(
    client, tenant, settings, inputs, monkeypatch
) -> None:
    import quant.pipeline

    real = quant.pipeline.run_pipeline
    calls = {"empty_cache": 0}

    def oom(*_args: Any, **_kwargs: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: calls.__setitem__("empty_cache", calls["empty_cache"] + 1)
    )
    monkeypatch.setattr(quant.pipeline, "run_pipeline", oom)
    failing = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=3)).json()["id"]
    assert run_job_here(client, settings, failing) == JobStatus.FAILED
    error = client.get(f"/v1/jobs/{failing}", headers=tenant.headers).json()["error"]
    assert error["code"] == "out_of_memory"
    assert (
        "data.batch_size (now 4)" in error["message"] and "data.num_calibration (now 4)" in error["message"]
    )
    assert calls["empty_cache"] == 1  # memory freed after the job

    monkeypatch.setattr(quant.pipeline, "run_pipeline", real)  # the same worker takes the next job
    following = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=4)).json()["id"]
    assert run_job_here(client, settings, following) == JobStatus.SUCCEEDED
    assert calls["empty_cache"] == 2


def test_error_bodies_show_no_server_path_or_traceback(client, tenant, settings, inputs, monkeypatch) -> None:
    from service.job import pipeline as gateway

    blob = _blob(settings, client, tenant, inputs["weights"])
    bodies = []
    bodies.append(client.post("/v1/jobs", headers=tenant.headers, json={"model": {"name": "no_such_arch"}}))
    spec = _spec(inputs)
    spec["model"]["weights_artifact_id"] = str(uuid.uuid4())
    bodies.append(client.post("/v1/jobs", headers=tenant.headers, json=spec))
    spec = _spec(inputs)
    spec["data"] = {"folder": "imagenet/val"}
    bodies.append(client.post("/v1/jobs", headers=tenant.headers, json=spec))
    bodies.append(upload(client, tenant.headers, b"\x80\x04not a safetensors file"))
    bodies.append(client.get("/v1/nowhere", headers=tenant.headers))

    def leaky(_config: Any) -> None:
        raise UnprocessableEntity(f"cannot read {blob}: {TRACEBACK}", code="invalid_weights")

    monkeypatch.setattr(gateway, "validate", leaky)
    bodies.append(client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=2)))

    def boom(_config: Any) -> None:
        raise RuntimeError(f"{blob} exploded")

    monkeypatch.setattr(gateway, "validate", boom)
    crashing = TestClient(client.app, raise_server_exceptions=False)
    bodies.append(crashing.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=2)))

    assert [response.status_code for response in bodies] == [422, 404, 422, 415, 404, 422, 500]
    for response in bodies:
        error = error_of(response)
        _assert_clean(response.text, settings, f"{response.request.method} {response.request.url.path}")
        assert error["details"]["request_id"] == response.headers["X-Request-ID"]
    assert bodies[-2].json()["error"]["message"] == "cannot read <artifacts>:"
    assert bodies[-1].json()["error"]["code"] == "internal_error"


def test_a_clients_request_id_is_echoed(client, tenant) -> None:
    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={**tenant.headers, "X-Request-ID": "trace-42"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "trace-42"
    assert error_of(response)["details"]["request_id"] == "trace-42"


def test_a_solver_input_error_anywhere_is_a_422_not_a_500(client, tenant, inputs, monkeypatch) -> None:
    from service.job import pipeline as gateway
    from solver import SolverInputError

    def reject(_config: Any) -> None:
        raise SolverInputError("budget 'wbits' must be a finite number > 0, got inf")

    monkeypatch.setattr(gateway, "validate", reject)
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=2))
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_problem"
