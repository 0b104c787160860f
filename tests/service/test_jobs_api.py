"""Job endpoints without a worker: validation of every bad input (status, code, message, nothing half-written),
listing with pagination and status filter, cancel, report/artifact before completion, reallocation rules."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from quant.config import STAGES
from service.job.repository import JobRepository
from service.models import Job, JobStatus, StageStatus, Tenant

from .conftest import error_of, row_counts
from .helpers import TINY_VIT, TINY_VIT_IMAGE, TINY_VIT_KWARGS, images_bytes, tiny_vit_weights, upload


@pytest.fixture
def inputs(client, tenant) -> dict[str, str]:
    """Ids of a matching weights artifact and a calibration-images artifact of the tenant."""
    weights = upload(client, tenant.headers, tiny_vit_weights()).json()["id"]
    images = upload(client, tenant.headers, images_bytes(n=4, size=TINY_VIT_IMAGE)).json()["id"]
    return {"weights": weights, "images": images}


def _spec(inputs: dict[str, str], **method: Any) -> dict[str, Any]:
    return {
        "model": {"name": TINY_VIT, "arch_kwargs": TINY_VIT_KWARGS, "weights_artifact_id": inputs["weights"]},
        "data": {"artifact_id": inputs["images"], "num_calibration": 4, "batch_size": 4},
        "method": {"quantizer": "minmax", **method},
        "device": "cpu",
    }


def _insert_job(client, tenant_name: str, status: JobStatus, *, sensitivity: dict | None = None) -> uuid.UUID:
    """A job row in a given state (the repository is what the service and workers write through)."""
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        job = Job(tenant_id=tenant_id, spec={"model": {"name": "builtin:vit-digits"}}, status=status)
        repository = JobRepository(session)
        repository.add(job)
        if sensitivity is not None:
            repository.set_stage(job.id, "sensitivity", status=StageStatus.FINISHED, output=sensitivity)
        session.commit()
        return job.id


def test_valid_job_is_accepted_with_all_stages_pending(client, tenant, inputs) -> None:
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, wbits=4, abits=8))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == 0.0
    assert [stage["name"] for stage in job["stages"]] == list(STAGES)
    assert list(STAGES) == ["load", "synthesize", "calibrate", "sensitivity", "latency", "allocate", "reconstruct",
                            "evaluate", "export"]
    assert {stage["status"] for stage in job["stages"]} == {"pending"}
    assert job["spec"]["model"]["weights_artifact_id"] == inputs["weights"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()["id"] == job["id"]


BAD_JOBS = {
    "unknown-architecture": (
        lambda i: {**_spec(i), "model": {"name": "vit_does_not_exist", "weights_artifact_id": i["weights"]}},
        422,
        "unknown_architecture",
        "unknown architecture",
    ),
    "unknown-builtin": (
        lambda i: {"model": {"name": "builtin:resnet-digits"}},
        422,
        "unknown_architecture",
        "builtin:vit-digits",
    ),
    "weights-do-not-match": (
        lambda i: {
            **_spec(i),
            "model": {
                "name": TINY_VIT,
                "arch_kwargs": {**TINY_VIT_KWARGS, "embed_dim": 64},
                "weights_artifact_id": i["weights"],
            },
        },
        422,
        "invalid_weights",
        "",
    ),
    "images-wrong-size": (
        lambda i: {
            **_spec(i),
            "model": {
                "name": TINY_VIT,
                "arch_kwargs": {**TINY_VIT_KWARGS, "img_size": 160},
                "weights_artifact_id": i["weights"],
            },
        },
        422,
        None,
        "",
    ),
    "wbits-not-allowed": (lambda i: _spec(i, wbits=7), 422, "validation_error", "wbits must be one of"),
    "abits-not-allowed": (lambda i: _spec(i, abits=1), 422, "validation_error", "abits must be one of"),
    "candidate-bits-not-allowed": (
        lambda i: _spec(i, budgets={"wbits": 4.0}, candidate_wbits=[4, 7]),
        422,
        "invalid_bits",
        "7",
    ),
    "unknown-budget": (
        lambda i: _spec(i, budgets={"joules": 3.0}),
        422,
        "validation_error",
        "unknown budget",
    ),
    "latency-budget-without-runtime-target": (
        lambda i: _spec(i, budgets={"latency_ms": 3.0}),
        422,
        "validation_error",
        "set target='onnxruntime-cpu'",
    ),
    "infeasible-budget": (lambda i: _spec(i, budgets={"wbits": 1.0}), 422, None, ""),
    "weights-artifact-is-images": (
        lambda i: {
            **_spec(i),
            "model": {"name": TINY_VIT, "arch_kwargs": TINY_VIT_KWARGS, "weights_artifact_id": i["images"]},
        },
        422,
        "wrong_artifact_kind",
        "expected weights",
    ),
    "missing-artifact": (
        lambda i: {**_spec(i), "data": {"artifact_id": str(uuid.uuid4())}},
        404,
        "artifact_not_found",
        "not found",
    ),
    "two-data-sources": (
        lambda i: {**_spec(i), "data": {"artifact_id": i["images"], "builtin": "builtin:digits"}},
        422,
        "validation_error",
        "at most one",
    ),
    "bad-device": (lambda i: {**_spec(i), "device": "tpu"}, 422, "validation_error", "device"),
    "unknown-field": (lambda i: {**_spec(i), "colour": "blue"}, 422, "validation_error", "colour"),
    "folder-without-data-root": (
        lambda i: {**_spec(i), "data": {"folder": "imagenet/val"}},
        422,
        "data_folder_disabled",
        "MPQ_DATA_ROOT",
    ),
    "not-json": (None, 422, "validation_error", ""),
}


@pytest.mark.parametrize(("build", "status", "code", "message"), BAD_JOBS.values(), ids=BAD_JOBS)
def test_bad_job_requests_are_rejected_and_leave_nothing(
    client, tenant, session, inputs, build, status, code, message
) -> None:
    before = row_counts(session, tenant.name)
    if build is None:
        response = client.post(
            "/v1/jobs", headers={**tenant.headers, "Content-Type": "application/json"}, content=b"{not json"
        )
    else:
        response = client.post("/v1/jobs", headers=tenant.headers, json=build(inputs))
    assert response.status_code == status, response.text
    error = error_of(response)
    if code is not None:
        assert error["code"] == code
    assert message in error["message"]
    assert error["message"]
    assert row_counts(session, tenant.name) == before


def test_infeasible_budget_reports_min_achievable(client, tenant, inputs) -> None:
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, budgets={"wbits": 1.0}))
    assert response.status_code == 422
    error = error_of(response)
    assert "wbits" in error["details"]["min_achievable"]
    assert error["details"]["min_achievable"]["wbits"] > 1.0


def test_job_not_found(client, tenant) -> None:
    missing = uuid.uuid4()
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/report"), ("GET", "/artifact")]:
        response = client.request(method, f"/v1/jobs/{missing}{path}", headers=tenant.headers)
        assert response.status_code == 404
        error = error_of(response)
        assert error["code"] == "job_not_found"
        assert str(missing) in error["message"]


def test_other_tenants_jobs_are_404(client, make_tenant) -> None:
    alice, bob = make_tenant("alice"), make_tenant("bob")
    job_id = _insert_job(client, alice.name, JobStatus.QUEUED)
    assert client.get(f"/v1/jobs/{job_id}", headers=alice.headers).status_code == 200
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/report"), ("GET", "/artifact")]:
        assert client.request(method, f"/v1/jobs/{job_id}{path}", headers=bob.headers).status_code == 404
    response = client.post(
        f"/v1/jobs/{job_id}/reallocate", headers=bob.headers, json={"budgets": {"wbits": 4}}
    )
    assert response.status_code == 404
    assert job_id not in {job["id"] for job in client.get("/v1/jobs", headers=bob.headers).json()["data"]}


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_cancel_of_a_finished_job_is_409(client, tenant, status) -> None:
    job_id = _insert_job(client, tenant.name, status)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "job_finished"
    assert f"already {status.value}" in error["message"]


def test_cancel_of_a_queued_job(client, tenant) -> None:
    job_id = _insert_job(client, tenant.name, JobStatus.QUEUED)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None


def test_cancel_of_a_running_job_sets_the_flag(client, tenant) -> None:
    job_id = _insert_job(client, tenant.name, JobStatus.RUNNING)
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True


def test_report_and_artifact_before_success_are_409(client, tenant) -> None:
    job_id = _insert_job(client, tenant.name, JobStatus.RUNNING)
    for path, code in [("report", "report_not_ready"), ("artifact", "artifact_not_ready")]:
        response = client.get(f"/v1/jobs/{job_id}/{path}", headers=tenant.headers)
        assert response.status_code == 409
        error = error_of(response)
        assert error["code"] == code and "running" in error["message"]


def test_reallocate_needs_a_finished_sensitivity_stage(client, tenant, session) -> None:
    job_id = _insert_job(client, tenant.name, JobStatus.RUNNING)
    before = row_counts(session, tenant.name)
    response = client.post(
        f"/v1/jobs/{job_id}/reallocate", headers=tenant.headers, json={"budgets": {"wbits": 4}}
    )
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "sensitivity_unavailable" and "sensitivit" in error["message"]
    # a uniform-precision job's skipped sensitivity cannot be reused either
    skipped = _insert_job(client, tenant.name, JobStatus.SUCCEEDED, sensitivity={"skipped": True})
    response = client.post(
        f"/v1/jobs/{skipped}/reallocate", headers=tenant.headers, json={"budgets": {"wbits": 4}}
    )
    assert response.status_code == 409
    assert row_counts(session, tenant.name)["jobs"] == before["jobs"] + 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({}, "budgets"), ({"budgets": {}}, "budgets"), ({"budgets": {"wbits": "x"}}, "budgets.wbits")],
)
def test_reallocate_body_is_validated(client, tenant, body, fragment) -> None:
    job_id = _insert_job(client, tenant.name, JobStatus.SUCCEEDED)
    response = client.post(f"/v1/jobs/{job_id}/reallocate", headers=tenant.headers, json=body)
    assert response.status_code == 422
    assert fragment in error_of(response)["message"]


def test_list_paginates_and_filters(client, make_tenant) -> None:
    owner = make_tenant("lister")
    created = [_insert_job(client, owner.name, JobStatus.QUEUED) for _ in range(5)]
    failed = _insert_job(client, owner.name, JobStatus.FAILED)
    page = client.get("/v1/jobs", headers=owner.headers, params={"limit": 2}).json()
    assert set(page) == {"data", "has_more", "next_cursor"}
    assert len(page["data"]) == 2 and page["has_more"] is True and page["next_cursor"]
    assert page["data"][0]["id"] == str(failed)  # newest first
    seen, after = [], None
    for _ in range(3):
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", headers=owner.headers, params=params).json()
        seen += [j["id"] for j in page["data"]]
        after = page["next_cursor"]
    assert page["has_more"] is False and after is None
    assert sorted(seen) == sorted(str(i) for i in [*created, failed])
    only_failed = client.get("/v1/jobs", headers=owner.headers, params={"status": "failed"}).json()
    assert [j["id"] for j in only_failed["data"]] == [str(failed)]
    for params, fragment in [
        ({"status": "exploded"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"after": "not-a-cursor"}, "after"),
    ]:
        response = client.get("/v1/jobs", headers=owner.headers, params=params)
        assert response.status_code == 422
        assert fragment in error_of(response)["message"]


def test_unknown_route_and_method_use_the_error_shape(client, tenant) -> None:
    response = client.get("/v1/nothing-here", headers=tenant.headers)
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = client.delete("/v1/jobs", headers=tenant.headers)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"
