"""Data-free jobs through the API (issue 21): ``data.synthetic`` generates the calibration images in the
``synthesize`` stage, the job registers them as an images artifact the tenant downloads and resubmits as calibration
data, a reallocation reuses them, and every bad request is a 422 that says what to change."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from safetensors.torch import load

from quant.config import STAGES
from service.models import JobStatus

from .conftest import error_of
from .helpers import run_job_here

VIT = "builtin:vit-digits"


def _spec(data: dict[str, Any], **method: Any) -> dict[str, Any]:
    return {"model": {"name": VIT}, "data": data,
            "method": {"quantizer": "minmax", "wbits": 8, "abits": 8, **method}, "device": "cpu"}


def _stages(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {stage["name"]: stage for stage in job["stages"]}


def test_data_free_job_end_to_end_then_resubmitted_with_its_images(client, settings, tenant) -> None:
    spec = _spec({"synthetic": {"images": 8, "steps": 2, "seed": 3}, "batch_size": 8},
                 budgets={"wbits": 6.0}, candidate_wbits=[4, 8], candidate_abits=[8])
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert [stage["name"] for stage in response.json()["stages"]] == list(STAGES)
    assert run_job_here(client, settings, job_id) == JobStatus.SUCCEEDED

    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    stages = _stages(job)
    assert stages["synthesize"]["status"] == "finished", job["error"]
    output = stages["synthesize"]["output"]
    assert output["count"] == 8 and output["steps"] == 2 and output["seed"] == 3
    assert set(output["entropy"]) == {"first", "last"} and output["generation_seconds"] > 0
    report = client.get(f"/v1/jobs/{job_id}/report", headers=tenant.headers).json()
    result = report["result"]
    assert result["metrics"]["accuracy"].startswith("not measured")
    assert result["metrics"]["quantized"]["top1"] is None
    assert result["timings"]["synthesize"] > 0

    # the images are an images artifact of the tenant: listed, described, downloadable
    artifact_id = result["synthetic_images"]["artifact_id"]
    assert result["synthetic_images"]["images"] == 8
    artifact = client.get(f"/v1/artifacts/{artifact_id}", headers=tenant.headers).json()
    assert artifact["kind"] == "images"
    assert artifact["tensors"]["images"] == {"dtype": "F32", "shape": [8, 3, 32, 32], "nonfinite": False}
    assert artifact["tensors"]["labels"]["shape"] == [8]
    listed = client.get("/v1/artifacts", headers=tenant.headers, params={"kind": "images"}).json()["data"]
    assert artifact_id in {row["id"] for row in listed}
    download = client.get(f"/v1/artifacts/{artifact_id}/content", headers=tenant.headers)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == artifact["sha256"] == download.headers["X-Content-SHA256"]
    tensors = load(download.content)
    assert tuple(tensors["images"].shape) == (8, 3, 32, 32) and tuple(tensors["labels"].shape) == (8,)
    assert 0 <= int(tensors["labels"].min()) and int(tensors["labels"].max()) <= 9

    # a reallocation reuses the synthetic images (no generation again)
    realloc = client.post(f"/v1/jobs/{job_id}/reallocate", headers=tenant.headers, json={"budgets": {"wbits": 5.0}})
    assert realloc.status_code == 202, realloc.text
    child = _stages(realloc.json())
    assert child["synthesize"]["status"] == "reused" and child["synthesize"]["reused_from"] == job_id
    assert run_job_here(client, settings, realloc.json()["id"]) == JobStatus.SUCCEEDED
    child_job = client.get(f"/v1/jobs/{realloc.json()['id']}", headers=tenant.headers).json()
    assert _stages(child_job)["synthesize"]["output"] == output

    # resubmitted as calibration data: the synthesize stage is skipped and the images are the calibration set
    again = client.post("/v1/jobs", headers=tenant.headers,
                        json=_spec({"artifact_id": artifact_id, "num_calibration": 8, "batch_size": 8}))
    assert again.status_code == 202, again.text
    assert run_job_here(client, settings, again.json()["id"]) == JobStatus.SUCCEEDED
    resubmitted = client.get(f"/v1/jobs/{again.json()['id']}", headers=tenant.headers).json()
    assert _stages(resubmitted)["synthesize"]["status"] == "skipped"
    assert _stages(resubmitted)["load"]["output"]["calibration_images"] == 8


def test_other_tenants_cannot_download_the_images(client, tenant, make_tenant) -> None:
    other = make_tenant("other")
    listed = client.get("/v1/artifacts", headers=tenant.headers, params={"kind": "images"}).json()["data"]
    for row in listed:
        assert client.get(f"/v1/artifacts/{row['id']}/content", headers=other.headers).status_code == 404


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"synthetic": {"images": 0}}, "data.synthetic.images: Input should be greater than or equal to 1"),
        ({"synthetic": {"images": 10**6}}, "data.synthetic.images: Input should be less than or equal to 100000"),
        ({"synthetic": {"images": 8, "steps": -1}},
         "data.synthetic.steps: Input should be greater than or equal to 0"),
        ({"synthetic": {"images": 8}, "builtin": "builtin:digits"},
         "give at most one of data.builtin, data.artifact_id, data.folder, data.synthetic"),
        ({"synthetic": {"images": 8}, "num_calibration": 8},
         "a data-free job gives its image count as data.synthetic.images, not data.num_calibration"),
    ],
    ids=["zero-images", "million-images", "negative-steps", "two-sources", "count-twice"],
)
def test_bad_synthetic_requests_are_422_saying_what_to_change(client, tenant, data, expected) -> None:
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(data))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert expected in error["message"], error["message"]


def test_more_images_than_the_server_allows_is_a_limit(client, tenant, settings) -> None:
    count = settings.max_calibration_images + 1
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec({"synthetic": {"images": count}}))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "limit_exceeded"
    assert error["message"].startswith(f"data.synthetic.images is {count}; this server allows at most "
                                       f"{settings.max_calibration_images}")


def test_an_architecture_without_attention_is_refused_at_submit(client, tenant) -> None:
    spec = {"model": {"name": "resnet18", "arch_kwargs": {"num_classes": 10}},
            "data": {"synthetic": {"images": 8}}, "device": "cpu"}
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "no_attention_blocks"
    assert "'resnet18' has no attention blocks" in error["message"]
    assert "upload calibration images instead (data.artifact_id)" in error["message"]
