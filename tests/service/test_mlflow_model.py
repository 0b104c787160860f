"""MLflow runs of real jobs against a real ``mlflow server``: the registered ``python_function`` model loads
with ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` and predicts the bundle's logits; run times are
the job's; params are the resolved configuration; cancelled jobs (queued or running) get a KILLED run."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import update

import quant
from service.artifact.storage import BlobStore
from service.models import Job, JobStatus
from service.tracking import track_job

from .helpers import run_job_here

pytestmark = pytest.mark.slow

SPEC = {
    "name": "mlflow-model",
    "model": {"name": "builtin:vit-digits"},
    "data": {"num_calibration": 16, "batch_size": 16},
    "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
    "seed": 3,
    "device": "cpu",
}


def _millis(value) -> int:
    return int(value.timestamp() * 1000)


def _run_of(mlflow, tenant_name: str, job_id) -> object:
    experiment = mlflow.get_experiment_by_name(f"mpq-{tenant_name}")
    (run,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`mpq.job_id` = '{job_id}'")
    return run


def test_registered_model_loads_with_pyfunc_and_predicts_the_bundles_logits(
    client, tenant, settings, mlflow_server, tmp_path
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    response = client.post("/v1/jobs", headers=tenant.headers, json=SPEC)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert run_job_here(client, settings, job_id) == JobStatus.SUCCEEDED
    job_dir = BlobStore(settings.artifact_dir).job_dir(uuid.UUID(job_id))
    name = f"mpq-model-{uuid.uuid4().hex[:6]}"
    tracked = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server, "mlflow_register_model": name})
    run_id = track_job(client.app.state.session_factory, tracked, uuid.UUID(job_id), job_dir / "output",
                       job_dir / "bundle.zip")
    assert run_id is not None

    tracking = MlflowClient(tracking_uri=mlflow_server)
    (version,) = tracking.search_model_versions(f"name = '{name}'")
    assert version.run_id == run_id
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    finally:
        mlflow.set_tracking_uri("")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = quant.load_quantized(job_dir / "output")(images).numpy()
    logits = model.predict(images.numpy())
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)  # the same model, rebuilt from the bundle
    assert np.abs(expected).max() > 0.1  # real logits, not zeros
    metadata = model.metadata
    assert metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    inputs, outputs = metadata.signature.inputs.to_dict(), metadata.signature.outputs.to_dict()
    assert inputs[0]["tensor-spec"]["dtype"] == outputs[0]["tensor-spec"]["dtype"] == "float32"
    assert list(inputs[0]["tensor-spec"]["shape"]) == [-1, 3, 32, 32]
    assert list(outputs[0]["tensor-spec"]["shape"]) == [-1, 10]
    example = Path(tracking.download_artifacts(run_id, "model/input_example.json", str(tmp_path / "ex")))
    assert example.is_file() and example.stat().st_size > 1000

    run = tracking.get_run(run_id)
    public = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).json()
    with client.app.state.session_factory() as session:
        row = session.get(Job, uuid.UUID(job_id))
        started, finished = row.started_at, row.finished_at
    assert run.info.status == "FINISHED"
    # the run spans the job (seconds), not the moment of logging (it was logged after the job finished)
    assert run.info.start_time == _millis(started) and run.info.end_time == _millis(finished)
    assert public["started_at"] and (finished - started).total_seconds() > 0.5
    params = run.data.params
    assert params["preset"] == "quick" and params["seed"] == "3" and params["device"] == "cpu"
    assert params["data.num_calibration"] == "16" and params["data.batch_size"] == "16"
    assert params["method.range_search"] == "minmax" and params["method.head_bits"] == "8"
    assert params["method.wbits"] == "8" and params["method.reconstruct"] == "none"  # quick preset's value
    assert {"report.html", "quant_config.json", "bundle", "model"} <= {
        item.path for item in tracking.list_artifacts(run_id)
    }


def test_cancelled_jobs_get_a_killed_run(client, tenant, settings, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    tracked = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server})
    client.app.state.settings = tracked
    try:
        queued = client.post("/v1/jobs", headers=tenant.headers, json=SPEC).json()["id"]
        response = client.post(f"/v1/jobs/{queued}/cancel", headers=tenant.headers)
        assert response.status_code == 202 and response.json()["status"] == "cancelled"
        running = client.post("/v1/jobs", headers=tenant.headers, json=SPEC).json()["id"]
    finally:
        client.app.state.settings = settings
    with client.app.state.session_factory() as session:  # asked to stop before its worker's first heartbeat
        session.execute(update(Job).where(Job.id == uuid.UUID(running)).values(cancel_requested=True))
        session.commit()
    assert run_job_here(client, tracked, running) == JobStatus.CANCELLED

    tracking = MlflowClient(tracking_uri=mlflow_server)
    for job_id in (queued, running):
        run = _run_of(tracking, tenant.name, job_id)
        assert run.info.status == "KILLED" and run.data.tags["mpq.status"] == "cancelled"
        assert run.data.params["preset"] == "quick" and run.data.params["data.num_calibration"] == "16"
        with client.app.state.session_factory() as session:
            row = session.get(Job, uuid.UUID(job_id))
            assert run.info.end_time == _millis(row.finished_at)
            assert run.info.start_time == _millis(row.started_at or row.created_at)
            assert not row.warnings
        assert "model" not in {item.path for item in tracking.list_artifacts(run.info.run_id)}
