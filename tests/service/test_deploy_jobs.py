"""Deployment jobs through the API (issue 12): ``export_onnx`` puts a model.onnx that onnxruntime runs into the
bundle; a job targets ``onnxruntime-cpu`` under a latency budget, measures its latency table once, and a
reallocation reuses that table (stage ``reused``, identical output, nothing measured); its Pareto curve is served
in milliseconds. What the worker would fail on is refused at submit with a 422 saying what to fix, writing nothing.

Jobs run in-process with the worker's ``execute_job`` on SQLite and PostgreSQL; the latency cache lives in a
temporary folder (``MPQ_LATENCY_CACHE``) so the first job really measures.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from quant.config import STAGES
from service.models import JobStatus
from service.settings import Settings

from .conftest import error_of, row_counts
from .helpers import run_job_here

pytestmark = pytest.mark.slow

DATA = {"num_calibration": 16, "batch_size": 16}
#: The cheapest real job: built-in ViT and digits, 16 calibration images, min-max ranges, quick preset.
BASE: dict[str, Any] = {
    "model": {"name": "builtin:vit-digits"},
    "data": DATA,
    "device": "cpu",
    "preset": "quick",
}
FAST = {"quantizer": "minmax", "range_search": "minmax"}
#: Where the onnxruntime-cpu job's latency budget sits between the fastest executable assignment (0) and the fp32
#: model (1) of the measured table (its reallocation: LOOSER). Derived from the table, never a fixed fraction of
#: fp32: what pays on this CPU, and by how much, is what the table measured.
LATENCY, LOOSER = 0.5, 0.8


def _budget_ms(table: dict[str, Any], position: float) -> float:
    """Milliseconds at ``position`` between the table's fastest assignment and its fp32 model."""
    fastest = table["rest_ms"] + sum(min(forms.values()) for forms in table["layers"].values())
    return fastest + position * (table["fp32_ms"] - fastest)


def _spec(method: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**BASE, "method": {**FAST, **method}, **top}


def _stages(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {stage["name"]: stage for stage in job["stages"]}


def _bundle(client: TestClient, headers: dict[str, str], job_id: str, folder: Path) -> Path:
    response = client.get(f"/v1/jobs/{job_id}/artifact", headers=headers)
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(folder)
    return folder


def _digits(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from quant.data import load_dataset

    test = load_dataset("builtin:digits", split="test", model_name="builtin:vit-digits")
    return test.images[:n], test.labels[:n]


def _onnx_matches_the_bundle(bundle: Path) -> dict[str, float]:
    """model.onnx loads in onnxruntime and reproduces the bundle's PyTorch model on 32 test digits."""
    from quant import load_quantized
    from quant.deploy.onnxruntime_cpu.runtime import make_session

    images, labels = _digits()
    session = make_session(str(bundle / "model.onnx"))
    (name,) = [item.name for item in session.get_inputs()]
    onnx_logits = np.concatenate(
        [session.run(None, {name: images[i : i + 1].numpy()})[0] for i in range(len(images))]
    )
    with torch.no_grad():
        torch_logits = load_quantized(bundle).eval()(images).numpy()
    assert onnx_logits.shape == torch_logits.shape == (len(images), 10)
    assert np.isfinite(onnx_logits).all()
    cosine = float(
        (onnx_logits * torch_logits).sum(1).mean()
        / np.sqrt((onnx_logits**2).sum(1) * (torch_logits**2).sum(1)).mean()
    )
    agreement = float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean())
    top1 = float((onnx_logits.argmax(1) == labels.numpy()).mean())
    assert cosine > 0.99 and agreement >= 0.9, (cosine, agreement)
    return {"cosine": cosine, "agreement": agreement, "top1": top1}


@pytest.fixture(scope="module")
def latency_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty latency cache for this module's jobs (restored afterwards)."""
    folder = tmp_path_factory.mktemp("latency-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPQ_LATENCY_CACHE", str(folder))
        yield folder


# ---- refused at submit -------------------------------------------------------------------------------------
REFUSED = [
    pytest.param(
        {"budgets": {"latency": 0.5}}, "validation_error", "onnxruntime-cpu", id="latency-needs-target"
    ),
    pytest.param(
        {"budgets": {"latency_ms": 2.0}}, "validation_error", "onnxruntime-cpu", id="latency-ms-needs-target"
    ),
    pytest.param(
        {"target": "onnxruntime-cpu", "forms": ["int4"], "budgets": {"wbits": 5}},
        "validation_error",
        "unknown forms ['int4']",
        id="unknown-form",
    ),
    pytest.param(
        {"forms": ["w4"], "budgets": {"wbits": 5}}, "validation_error", "forms", id="forms-need-target"
    ),
    pytest.param(
        {"budgets": {"wbits": 5}, "sweep": 8, "sweep_budget": "abits"},
        "validation_error",
        "sweep_budget 'abits'",
        id="sweep-budget-not-a-budget",
    ),
    pytest.param({"budgets": {"wbits": 5}, "sweep": 300}, "validation_error", "2..256", id="sweep-too-many"),
    pytest.param({"sweep": 4}, "validation_error", "at least one budget", id="sweep-without-budget"),
    pytest.param(
        {"target": "onnxruntime-cpu", "block_size": 24}, "validation_error", "power of two", id="block-size"
    ),
    pytest.param({"target": "tpu"}, "validation_error", "target", id="unknown-target"),
    pytest.param(
        {"target": "onnxruntime-cpu", "wbits": 3, "abits": 3},
        "validation_error",
        "(3, 3)",
        id="not-executable",
    ),
    pytest.param(
        {"target": "onnxruntime-cpu", "budgets": {"latency": 0.8}, "sweep": 4, "sweep_measure": 1000},
        "limit_exceeded",
        "MPQ_MAX_SWEEP_MEASURE",
        id="sweep-measure-limit",
    ),
]


@pytest.mark.parametrize(("method", "code", "needle"), REFUSED)
def test_submit_refuses_what_the_worker_would_fail_on(
    client: TestClient, session, settings: Settings, tenant, method: dict[str, Any], code: str, needle: str
) -> None:
    before = row_counts(session, tenant.name)
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(method))
    error = error_of(response)
    assert response.status_code == 422 and error["code"] == code, error
    assert needle in error["message"] and "Value error" not in error["message"], error["message"]
    text = json.dumps(error)
    for fragment in (str(settings.artifact_dir), "/tmp/", "/work/", "Traceback"):
        assert fragment not in text, text
    assert row_counts(session, tenant.name) == before


def test_a_deployment_job_with_a_latency_budget_and_a_sweep_is_accepted(client: TestClient, tenant) -> None:
    method = {
        "target": "onnxruntime-cpu",
        "budgets": {"latency": 0.5, "wbits": 6},
        "sweep": 4,
        "sweep_budget": "latency",
        "forms": ["int8", "w4", "w4a8"],
        "block_size": 64,
    }
    response = client.post("/v1/jobs", headers=tenant.headers, json=_spec(method, export_onnx=True))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["spec"]["export_onnx"] is True and job["spec"]["method"]["target"] == "onnxruntime-cpu"
    assert [stage["name"] for stage in job["stages"]] == list(STAGES)
    assert all(stage["status"] == "pending" for stage in job["stages"])
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)


# ---- export_onnx ---------------------------------------------------------------------------------------------
def test_export_onnx_puts_a_model_onnxruntime_runs_into_the_bundle(
    client: TestClient, settings: Settings, tenant, tmp_path: Path
) -> None:
    spec = _spec({"wbits": 8, "abits": 8}, export_onnx=True)
    job_id = client.post("/v1/jobs", headers=tenant.headers, json=spec).json()["id"]
    assert run_job_here(client, settings, job_id) == JobStatus.SUCCEEDED
    job = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    assert job["status"] == "succeeded", job["error"]
    assert "model.onnx" in _stages(job)["export"]["output"]["files"]
    assert _stages(job)["latency"]["status"] == "skipped"  # target sim: nothing to measure
    bundle = _bundle(client, tenant.headers, job_id, tmp_path / "bundle")
    assert {"model.onnx", "model.safetensors", "report.json", "report.html"} <= {
        p.name for p in bundle.iterdir()
    }
    _onnx_matches_the_bundle(bundle)
    # without the flag there is no model.onnx
    spec = _spec({"wbits": 8, "abits": 8})
    plain = client.post("/v1/jobs", headers=tenant.headers, json=spec).json()["id"]
    assert run_job_here(client, settings, plain) == JobStatus.SUCCEEDED
    assert not (_bundle(client, tenant.headers, plain, tmp_path / "plain") / "model.onnx").exists()


# ---- onnxruntime-cpu under a latency budget, reallocated without measuring -----------------------------------
@pytest.fixture(scope="module")
def deployed(client: TestClient, settings: Settings, latency_cache: Path) -> dict[str, Any]:
    """A finished onnxruntime-cpu job under a latency budget, with model.onnx: ``{"id", "headers", "job"}``."""
    from service.auth.service import create_key

    with client.app.state.session_factory() as session:
        headers = {"Authorization": f"Bearer {create_key(session, f'deploy-{uuid.uuid4().hex[:8]}').key}"}
    # a uniform job measures the table (and caches it); the budgeted job then sits between its extremes
    probe = client.post("/v1/jobs", headers=headers, json=_spec({"target": "onnxruntime-cpu", "head_bits": None}))
    assert probe.status_code == 202, probe.text
    assert run_job_here(client, settings, probe.json()["id"]) == JobStatus.SUCCEEDED
    table = _stages(client.get(f"/v1/jobs/{probe.json()['id']}", headers=headers).json())["latency"]["output"]["table"]
    limit_ms = _budget_ms(table, LATENCY)
    spec = _spec({"target": "onnxruntime-cpu", "head_bits": None, "budgets": {"latency_ms": limit_ms}},
                 export_onnx=True)
    response = client.post("/v1/jobs", headers=headers, json=spec)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    run_job_here(client, settings, job_id)
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job["error"]
    return {"id": job_id, "headers": headers, "job": job, "limit_ms": limit_ms}


def test_an_onnxruntime_job_meets_its_latency_budget(
    client: TestClient, deployed: dict[str, Any], tmp_path: Path, latency_cache: Path
) -> None:
    stages = _stages(deployed["job"])
    latency = stages["latency"]
    assert latency["status"] == "finished" and latency["reused_from"] is None  # from the cache, not reused
    table = latency["output"]["table"]
    assert table["fp32_ms"] > 0 and table["layers"]
    assert deployed["limit_ms"] == pytest.approx(_budget_ms(table, LATENCY))  # the same (cached) table
    assert any(latency_cache.rglob("*.json")), "the measured table is cached on disk"
    report = client.get(f"/v1/jobs/{deployed['id']}/report", headers=deployed["headers"]).json()
    metrics = report["result"]["metrics"]
    summary = {key: table[key] for key in ("fp32_ms", "rest_ms")}
    assert 0 < metrics["predicted_latency_ms"] <= deployed["limit_ms"] + 1e-6, (metrics, summary)
    forms = {layer["details"].get("form") for layer in report["layers"]}
    assert forms and forms <= {"fp32", "int8", "w8", "w4", "w4a8"}, forms
    assert report["result"]["latency"]["predicted_ms"] == pytest.approx(metrics["predicted_latency_ms"])
    deployment = metrics["deployment"]
    assert deployment["runtime"] == "onnxruntime-cpu" and deployment["latency_ms"] > 0
    bundle = _bundle(client, deployed["headers"], deployed["id"], tmp_path / "bundle")
    _onnx_matches_the_bundle(bundle)


def test_a_reallocation_reuses_the_latency_table_without_measuring(
    client: TestClient, settings: Settings, deployed: dict[str, Any], latency_cache: Path, monkeypatch
) -> None:
    import quant.pipeline.run

    def measured_again(*_args: Any, **_kwargs: Any) -> dict:
        raise AssertionError("the reallocated job measured latency again")

    monkeypatch.setattr(quant.pipeline.run, "latency_stage", measured_again)
    for cached in latency_cache.rglob("*"):  # not even the on-disk cache may be needed
        if cached.is_file():
            cached.unlink()
    headers = deployed["headers"]
    parent_table = _stages(deployed["job"])["latency"]["output"]["table"]
    looser_ms = _budget_ms(parent_table, LOOSER)
    response = client.post(
        f"/v1/jobs/{deployed['id']}/reallocate", headers=headers,
        json={"budgets": {"latency": looser_ms / parent_table["fp32_ms"]}},
    )
    assert response.status_code == 202, response.text
    child = response.json()
    parent_stages = _stages(deployed["job"])
    for name in ("calibrate", "sensitivity", "latency"):
        stage = _stages(child)[name]
        assert stage["status"] == "reused" and stage["reused_from"] == deployed["id"], stage
    assert run_job_here(client, settings, child["id"]) == JobStatus.SUCCEEDED
    child = client.get(f"/v1/jobs/{child['id']}", headers=headers).json()
    assert child["status"] == "succeeded", child["error"]
    stages = _stages(child)
    for name in ("calibrate", "sensitivity", "latency"):
        assert stages[name]["status"] == "reused" and stages[name]["reused_from"] == deployed["id"]
        assert stages[name]["started_at"] is None and stages[name]["finished_at"] is None
        assert stages[name]["output"] == parent_stages[name]["output"]
    assert stages["allocate"]["status"] == "finished"
    fp32_ms = parent_stages["latency"]["output"]["table"]["fp32_ms"]
    predicted = client.get(f"/v1/jobs/{child['id']}/report", headers=headers).json()["result"]["metrics"][
        "predicted_latency_ms"
    ]
    assert predicted <= looser_ms + 1e-6
    assert not any(path.is_file() for path in latency_cache.rglob("*")), "the child wrote a new latency table"

    # a latency budget in milliseconds is allowed as well; a sim budget key stays allowed
    response = client.post(
        f"/v1/jobs/{deployed['id']}/reallocate", headers=headers, json={"budgets": {"latency_ms": fp32_ms}}
    )
    assert response.status_code == 202, response.text
    client.post(f"/v1/jobs/{response.json()['id']}/cancel", headers=headers)


def test_the_pareto_curve_of_a_latency_budget(client: TestClient, deployed: dict[str, Any]) -> None:
    url = f"/v1/jobs/{deployed['id']}/pareto"
    fp32_ms = _stages(deployed["job"])["latency"]["output"]["table"]["fp32_ms"]
    response = client.post(url, headers=deployed["headers"], json={"budget": "latency_ms", "points": 8})
    assert response.status_code == 200, response.text
    curve = response.json()
    assert curve["budget"] == "latency_ms" and "ms" in curve["unit"]
    # the job's own latency budget (milliseconds) is the chosen point
    assert curve["chosen"] == pytest.approx(deployed["limit_ms"], rel=1e-6)
    points = curve["points"]
    assert len([p for p in points if not p["chosen"]]) == 8
    feasible = [p for p in points if p["objective"] is not None]
    assert len(feasible) >= 8
    for looser, tighter in zip(feasible[1:], feasible[:-1], strict=True):
        assert looser["value"] >= tighter["value"] and looser["objective"] <= tighter["objective"] + 1e-9
    layers = sum(feasible[0]["forms"].values())
    for point in feasible:
        assert point["predicted_latency_ms"] <= point["value"] + 1e-6
        assert (
            set(point["forms"]) <= {"fp32", "int8", "w8", "w4", "w4a8"}
            and sum(point["forms"].values()) == layers
        )
    response = client.post(url, headers=deployed["headers"], json={"budget": "latency", "points": 4})
    assert response.status_code == 200, response.text
    assert response.json()["chosen"] == pytest.approx(deployed["limit_ms"] / fp32_ms)  # the same, as a fraction
