"""Every bad input of issue 13 is refused at submit with a 4xx and a stable code, and leaves nothing half-stored.

Runs through the API on SQLite and PostgreSQL (the ``client`` fixture is parametrised over both backends).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import torch
from safetensors.torch import save
from sqlalchemy import select

from service.errors import UnprocessableEntity
from service.job.config import check_device
from service.job.repository import JobRepository
from service.models import Job, JobStatus, StageStatus, Tenant
from service.settings import Settings

from .conftest import error_of, files_under, row_counts
from .helpers import TINY_VIT, TINY_VIT_IMAGE, TINY_VIT_KWARGS, images_bytes, tiny_vit_weights, upload

BUDGET_ERRORS = ("validation_error", "invalid_budget")


@pytest.fixture
def inputs(client, tenant) -> dict[str, str]:
    """Ids of a matching weights artifact and a 4-image calibration artifact of the tenant."""
    weights = upload(client, tenant.headers, tiny_vit_weights())
    images = upload(client, tenant.headers, images_bytes(n=4, size=TINY_VIT_IMAGE))
    assert weights.status_code == 201 and images.status_code == 201, (weights.text, images.text)
    return {"weights": weights.json()["id"], "images": images.json()["id"]}


def _spec(inputs: dict[str, str], *, method: dict | None = None, **top: Any) -> dict[str, Any]:
    spec = {
        "model": {"name": TINY_VIT, "arch_kwargs": TINY_VIT_KWARGS, "weights_artifact_id": inputs["weights"]},
        "data": {"artifact_id": inputs["images"], "num_calibration": 4, "batch_size": 4},
        "method": {"quantizer": "minmax", **(method or {})},
        "device": "cpu",
    }
    spec.update(top)
    return spec


def _post_raw(client, headers: dict[str, str], path: str, body: str):
    """POST a JSON text as is (``Infinity`` and ``1e309`` are not producible with ``json=``)."""
    return client.post(path, headers={**headers, "Content-Type": "application/json"}, content=body)


def _refused(client, session, tenant, settings, response, status: int, codes: tuple[str, ...] | str):
    """Assert the error, and that the tenant's rows and the artifact store are as before."""
    codes = (codes,) if isinstance(codes, str) else codes
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] in codes, error
    assert error["details"]["request_id"] == response.headers["X-Request-ID"]
    return error


# ---- budgets that are not finite numbers -------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["Infinity", "1e309", "-Infinity", "NaN"])
def test_non_finite_budget_on_submit_is_422_and_stores_nothing(
    client, session, tenant, settings, inputs, literal
) -> None:
    before, blobs = row_counts(session, tenant.name), files_under(settings.artifact_dir)
    body = json.dumps(_spec(inputs, method={"budgets": {"wbits": 4.0}})).replace("4.0", literal)
    response = _post_raw(client, tenant.headers, "/v1/jobs", body)
    _refused(client, session, tenant, settings, response, 422, BUDGET_ERRORS)
    assert row_counts(session, tenant.name) == before
    assert files_under(settings.artifact_dir) == blobs


def _parent_with_sensitivities(client, tenant_name: str, spec: dict[str, Any]) -> uuid.UUID:
    with client.app.state.session_factory() as db:
        tenant_id = db.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        job = Job(tenant_id=tenant_id, spec=spec, status=JobStatus.SUCCEEDED)
        repository = JobRepository(db)
        repository.add(job)
        repository.set_stage(job.id, "sensitivity", status=StageStatus.FINISHED, output={"table": {}})
        db.commit()
        return job.id


@pytest.mark.parametrize("literal", ["Infinity", "1e309"])
def test_non_finite_budget_on_reallocate_is_422(client, session, tenant, settings, inputs, literal) -> None:
    parent = _parent_with_sensitivities(
        client, tenant.name, _spec(inputs, method={"budgets": {"wbits": 4.0}})
    )
    before = row_counts(session, tenant.name)
    response = _post_raw(
        client, tenant.headers, f"/v1/jobs/{parent}/reallocate", f'{{"budgets": {{"wbits": {literal}}}}}'
    )
    _refused(client, session, tenant, settings, response, 422, BUDGET_ERRORS)
    assert row_counts(session, tenant.name) == before


@pytest.mark.parametrize("literal", ["Infinity", "1e309"])
def test_non_finite_budget_on_allocate_is_422(client, tenant, literal) -> None:
    layer = {
        "name": "a",
        "candidates": [{"wbits": 4, "abits": 8, "sensitivity": 0.1, "costs": {"size": 1.0}}],
    }
    body = json.dumps({"layers": [layer], "budgets": {"size": 2.0}}).replace("2.0", literal)
    response = _post_raw(client, tenant.headers, "/v1/allocate", body)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "validation_error"


# ---- an artifact's kind belongs to the artifact ------------------------------------------------------------
def test_reupload_with_another_kind_makes_a_new_artifact_and_keeps_the_old(client, session, tenant) -> None:
    payload = images_bytes(n=3, size=8, seed=11)
    first = upload(client, tenant.headers, payload, kind="images")
    assert first.status_code == 201, first.text
    second = upload(client, tenant.headers, payload, kind="weights")
    assert second.status_code == 201, second.text
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["kind"] == "weights"
    again = client.get(f"/v1/artifacts/{first.json()['id']}", headers=tenant.headers).json()
    assert again["kind"] == "images"
    third = upload(client, tenant.headers, payload, kind="images")  # same bytes, same kind: the same artifact
    assert third.json()["id"] == first.json()["id"]
    assert row_counts(session, tenant.name)["artifacts"] == 2


# ---- NaN / inf in uploaded tensors -------------------------------------------------------------------------
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_flagged_on_upload_and_refused_at_submit(
    client, session, tenant, settings, inputs, bad_value
) -> None:
    import timm

    torch.manual_seed(0)
    state = timm.create_model(TINY_VIT, pretrained=False, **TINY_VIT_KWARGS).state_dict()
    state = {key: value.contiguous().clone() for key, value in state.items()}
    state["blocks.0.mlp.fc1.weight"][3, 5] = bad_value
    uploaded = upload(client, tenant.headers, save(state))
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["tensors"]["blocks.0.mlp.fc1.weight"]["nonfinite"] is True
    assert uploaded.json()["tensors"]["blocks.0.mlp.fc2.weight"]["nonfinite"] is False
    before, blobs = row_counts(session, tenant.name), files_under(settings.artifact_dir)
    spec = _spec(inputs)
    spec["model"]["weights_artifact_id"] = uploaded.json()["id"]
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    error = _refused(client, session, tenant, settings, response, 422, "nonfinite_weights")
    assert error["details"]["tensors"] == ["blocks.0.mlp.fc1.weight"]
    assert row_counts(session, tenant.name) == before
    assert files_under(settings.artifact_dir) == blobs


def test_nonfinite_images_are_refused_at_submit(client, session, tenant, settings, inputs) -> None:
    images = torch.randn(4, 3, TINY_VIT_IMAGE, TINY_VIT_IMAGE)
    images[2, 1, 7, 7] = float("nan")
    uploaded = upload(client, tenant.headers, save({"images": images}))
    assert uploaded.status_code == 201, uploaded.text
    before = row_counts(session, tenant.name)
    spec = _spec(inputs)
    spec["data"]["artifact_id"] = uploaded.json()["id"]
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    _refused(client, session, tenant, settings, response, 422, "nonfinite_images")
    assert row_counts(session, tenant.name) == before


def test_large_tensors_are_scanned_in_slices(tmp_path, monkeypatch) -> None:
    from service.artifact import inspection

    monkeypatch.setattr(inspection, "_SCAN_ELEMENTS", 64)
    big = torch.zeros(50, 10)
    big[47, 3] = float("-inf")
    path = tmp_path / "w.safetensors"
    path.write_bytes(save({"big": big, "fine": torch.ones(20, 10), "ints": torch.arange(5)}))
    tensors = inspection.read_safetensors_header(path)
    assert inspection.nonfinite_tensors(path, tensors) == ["big"]


# ---- upper bounds (operator settings) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "field", "value", "setting"),
    [
        ("method", "reconstruct_iters", 10**9, "max_reconstruct_iters"),
        ("method", "iterative_rounds", 1000, "max_iterative_rounds"),
        ("method", "reconstruct_rank", 100_000, "max_reconstruct_rank"),
        ("data", "num_calibration", 50_000, "max_calibration_images"),
    ],
)
def test_values_over_the_operator_limits_are_422(
    client, session, tenant, settings, inputs, where, field, value, setting
) -> None:
    spec = _spec(inputs)
    spec[where][field] = value
    before = row_counts(session, tenant.name)
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    error = _refused(client, session, tenant, settings, response, 422, "limit_exceeded")
    assert error["details"]["field"] == f"{where}.{field}"
    assert error["details"]["max"] == getattr(settings, setting)
    assert f"MPQ_{setting.upper()}" in error["message"]
    assert row_counts(session, tenant.name) == before


def test_values_at_the_limit_are_accepted(client, tenant, inputs, settings) -> None:
    spec = _spec(inputs, method={"reconstruct_iters": settings.max_reconstruct_iters})
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text


# ---- devices the workers cannot serve ----------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_on_a_cpu_deployment_is_422(
    client, session, tenant, settings, inputs, monkeypatch, device
) -> None:
    monkeypatch.setattr(settings, "device", "cpu")
    before = row_counts(session, tenant.name)
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, device=device))
    error = _refused(client, session, tenant, settings, response, 422, "device_unavailable")
    assert "cpu" in error["message"]
    assert row_counts(session, tenant.name) == before


def test_cpu_and_auto_are_always_served(client, tenant, inputs, settings, monkeypatch) -> None:
    monkeypatch.setattr(settings, "device", "cpu")
    for device in ("cpu", "auto"):
        response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, device=device))
        assert response.status_code == 202, response.text


def test_gpu_workers_serve_cuda_but_not_another_index() -> None:
    gpu = Settings(device="cuda", database_url="sqlite://")
    check_device("cuda", gpu)
    check_device("cuda:0", gpu)
    with pytest.raises(UnprocessableEntity) as info:
        check_device("cuda:7", gpu)
    assert info.value.code == "device_unavailable" and "CUDA_VISIBLE_DEVICES" in info.value.message


# ---- model keywords ----------------------------------------------------------------------------------------
def test_unknown_arch_kwargs_key_has_its_own_code(client, session, tenant, settings, inputs) -> None:
    spec = _spec(inputs)
    spec["model"]["arch_kwargs"] = {**TINY_VIT_KWARGS, "not_a_keyword": 3}
    before = row_counts(session, tenant.name)
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    error = _refused(client, session, tenant, settings, response, 422, "invalid_arch_kwargs")
    assert "not_a_keyword" in error["message"]
    assert row_counts(session, tenant.name) == before


def test_weights_of_another_shape_are_invalid_weights(client, session, tenant, settings, inputs) -> None:
    other = upload(client, tenant.headers, tiny_vit_weights(embed_dim=64)).json()["id"]
    spec = _spec(inputs)
    spec["model"]["weights_artifact_id"] = other
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    error = _refused(client, session, tenant, settings, response, 422, "invalid_weights")
    assert "shape mismatches" in error["message"]


# ---- more calibration images asked than the data holds ------------------------------------------------------
def test_num_calibration_over_the_data_is_a_job_warning(client, tenant, inputs) -> None:
    spec = _spec(inputs)
    spec["data"]["num_calibration"] = 100
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text
    job = client.get(f"/v1/jobs/{response.json()['id']}", headers=tenant.headers).json()
    assert job["warnings"] == [
        {
            "code": "calibration_images_capped",
            "message": "num_calibration is 100 but the calibration data holds 4 images; all 4 are used",
        }
    ]


# ---- client side: downloads never overwrite another job's bundle -------------------------------------------
def test_download_refuses_another_jobs_bundle_unless_forced(tmp_path, capsys, monkeypatch) -> None:
    import contextlib

    from service.cli import main
    from service.commands import jobs

    downloaded = []

    class FakeClient:
        def download(self, job_id: str, destination, *, extract: bool = True):
            destination.mkdir(parents=True, exist_ok=True)
            (destination / "report.json").write_text(job_id)
            downloaded.append(job_id)
            return destination

    monkeypatch.setattr(jobs, "open_client", lambda _args: contextlib.nullcontext(FakeClient()))
    folder = tmp_path / "bundle"

    def download(job_id: str, force: bool = False) -> int:
        return main(["download", job_id, "-o", str(folder), *(["--force"] if force else [])])

    assert download("job-a") == 0
    assert (folder / jobs.JOB_MARKER).read_text().strip() == "job-a"
    assert download("job-a") == 0  # the same job again is fine
    assert download("job-b") == 1
    assert "already holds the bundle of job job-a" in capsys.readouterr().err
    assert (folder / "report.json").read_text() == "job-a"
    assert download("job-b", force=True) == 0
    assert (folder / "report.json").read_text() == "job-b"
    assert downloaded == ["job-a", "job-a", "job-b"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    assert (
        jobs.download_conflict(other, "job-c", zip_file=False)
        == f"{other} already holds files that are not this job's bundle"
    )
    assert (
        jobs.download_conflict(other / "thesis.tex", "job-c", zip_file=True)
        == f"{other / 'thesis.tex'} exists"
    )


# ---- a stable data directory -------------------------------------------------------------------------------
def test_default_data_directory_does_not_depend_on_the_working_directory(tmp_path, monkeypatch) -> None:
    for name in ("MPQ_HOME", "MPQ_DATABASE_URL", "MPQ_ARTIFACT_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = Settings()
    monkeypatch.chdir(tmp_path)
    second = Settings()
    assert (
        first.database_url == second.database_url == f"sqlite:///{tmp_path / 'home/.local/share/mpq/mpq.db'}"
    )
    assert first.artifact_dir == second.artifact_dir == tmp_path / "home/.local/share/mpq/artifacts"
    monkeypatch.setenv("MPQ_HOME", str(tmp_path / "data"))
    assert Settings().database_url == f"sqlite:///{tmp_path / 'data/mpq.db'}"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MPQ_HOME")
    assert Settings().artifact_dir == tmp_path / "xdg/mpq/artifacts"


def test_a_cuda_job_reaching_a_cpu_worker_fails_fast(client, tenant, settings, inputs, monkeypatch) -> None:
    import torch

    from service.worker.runner import execute_job

    monkeypatch.setattr(settings, "device", "cuda")  # an API that believes its workers have GPUs
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, device="cuda"))
    assert response.status_code == 202, response.text
    monkeypatch.setattr(settings, "device", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = execute_job(
        uuid.UUID(response.json()["id"]),
        session_factory=client.app.state.session_factory,
        settings=settings,
        worker_id="test:cpu",
    )
    assert status == JobStatus.FAILED
    error = client.get(f"/v1/jobs/{response.json()['id']}", headers=tenant.headers).json()["error"]
    assert error["code"] == "device_unavailable"
    assert "no usable GPU" in error["message"]


def test_the_printed_data_location_hides_database_passwords(tmp_path) -> None:
    from service.serve import data_location

    text = data_location(
        Settings(
            database_url="postgresql+psycopg://mpq:s3cret@db:5432/mpq",
            home=tmp_path,
            artifact_dir=tmp_path / "a",
        )
    )
    assert "s3cret" not in text and "db:5432/mpq" in text and str(tmp_path / "a") in text


# ---- presets: the limits bound what the job will run, explicit settings win --------------------------------
def test_the_paper_preset_is_bounded_by_the_operator_limits(
    client, session, tenant, settings, inputs, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "max_reconstruct_iters", 1000)
    before = row_counts(session, tenant.name)
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(inputs, preset="paper"))
    error = _refused(client, session, tenant, settings, response, 422, "limit_exceeded")
    assert error["details"] == {**error["details"], "field": "method.reconstruct_iters", "value": 20000, "max": 1000}
    assert row_counts(session, tenant.name) == before
    # an explicit setting overrides the preset, so the same job with 500 iterations is accepted
    spec = _spec(inputs, preset="paper", method={"reconstruct_iters": 500})
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text


def test_the_stored_spec_is_what_the_tenant_gave_so_a_preset_fills_the_rest(client, tenant, inputs) -> None:
    from quant.presets import resolve_preset
    from service.job.config import build_pipeline_config
    from service.job.schemas import JobCreate

    spec = _spec(inputs, preset="paper", method={"reconstruct_iters": 300})
    del spec["data"]["num_calibration"]
    response = client.post("/v1/jobs", headers=tenant.headers, json=spec)
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]
    assert "reconstruct" not in stored["method"] and "num_calibration" not in stored["data"]
    config = build_pipeline_config(
        JobCreate.model_validate(stored), artifact_path=lambda _id: __file__, data_root=None
    )
    resolved = resolve_preset(config, "cpu")
    assert resolved.preset == "paper"
    assert resolved.method.reconstruct == "fisher_dplr" and resolved.method.reconstruct_iters == 300
    assert resolved.data.num_calibration == 1024 and resolved.data.batch_size == 4
