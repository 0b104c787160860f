"""MLflow tracking against a real ``mlflow server`` (SQLite backend store, local artifact root) on loopback:
one run per job with params, metrics (per-block losses as steps), artifacts and tags; a tracking failure is a
job warning, never a failed job, and names no URL. Real jobs (test_mlflow_model.py): the registered pyfunc
model, run times, resolved params and cancelled jobs. In CI (``CI=true``) the server must start."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.job.repository import JobRepository
from service.models import Job, JobStatus, Tenant
from service.settings import Settings
from service.tracking import track_job
from tests.waiting import wait_until

from .server import free_port

RESULT = {
    "metrics": {
        "float": {"top1": 0.91, "cross_entropy": 0.3},
        "quantized": {"top1": 0.875, "kl": 0.0123, "agreement": 0.95, "cross_entropy": 0.35},
        "bits": {"weights_avg": 5.5, "activations_avg": 8.0},
        "size_bytes": 123456,
        "bops": 7.5e9,
    },
    "timings": {"load": 0.5, "sensitivity": 3.25, "reconstruct": 12.0},
    "stages": {
        "reconstruct": {
            "blocks": [
                {"index": 0, "error_after": 0.5, "train_loss": 0.4},
                {"index": 1, "error_after": 0.25, "train_loss": 0.2},
                {"index": 2, "error_after": 0.125, "train_loss": 0.1},
            ]
        }
    },
}
SPEC = {
    "name": "nightly",
    "model": {"name": "builtin:vit-digits"},
    "method": {"quantizer": "minmax", "budgets": {"wbits": 5.5}, "reconstruct": "mse"},
    "seed": 7,
}


def _finished_job(client, tenant_name: str, *, parent: uuid.UUID | None = None) -> uuid.UUID:
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        job = Job(
            tenant_id=tenant_id,
            spec=SPEC,
            name="nightly",
            parent_id=parent,
            status=JobStatus.SUCCEEDED,
            result=RESULT,
        )
        JobRepository(session).add(job)
        session.commit()
        return job.id


def _outputs(tmp_path: Path) -> tuple[Path, Path]:
    output = tmp_path / "output"
    output.mkdir()
    (output / "report.html").write_text("<html><body>report</body></html>")
    (output / "quant_config.json").write_text('{"layers": {}}')
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return output, bundle


def test_job_is_logged_as_one_run(client, tenant, settings, mlflow_server, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    tracked = settings.model_copy(
        update={"mlflow_tracking_uri": mlflow_server, "mlflow_register_model": f"mpq-{uuid.uuid4().hex[:6]}"}
    )
    parent = _finished_job(client, tenant.name)
    job_id = _finished_job(client, tenant.name, parent=parent)
    output, bundle = _outputs(tmp_path)
    run_id = track_job(client.app.state.session_factory, tracked, job_id, output, bundle)
    assert run_id is not None
    mlflow = MlflowClient(tracking_uri=mlflow_server)
    experiment = mlflow.get_experiment_by_name(f"mpq-{tenant.name}")
    (run,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`mpq.job_id` = '{job_id}'")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["mpq.tenant"] == tenant.name and run.data.tags["mpq.parent_job_id"] == str(parent)
    metrics = run.data.metrics
    assert metrics["quantized_top1"] == pytest.approx(0.875) and metrics["float_top1"] == pytest.approx(0.91)
    assert metrics["kl"] == pytest.approx(0.0123) and metrics["agreement"] == pytest.approx(0.95)
    assert metrics["avg_weight_bits"] == pytest.approx(5.5) and metrics["size_bytes"] == 123456
    assert metrics["bops"] == pytest.approx(7.5e9) and metrics["stage_seconds.sensitivity"] == pytest.approx(
        3.25
    )
    history = mlflow.get_metric_history(run_id, "reconstruct_block_error")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.5),
        (1, 0.25),
        (2, 0.125),
    ]
    params = run.data.params
    assert params["model"] == "builtin:vit-digits" and params["seed"] == "7"
    assert params["budget.wbits"] == "5.5" and params["method.quantizer"] == "minmax"
    # the resolved configuration: the quick preset's values, range search resolved by recipe, no empty sizes
    assert params["preset"] == "quick" and params["method.reconstruct_iters"] == "500"
    assert params["method.range_search"] == "minmax" and params["method.range_search_requested"] == "auto"
    assert params["method.head_bits"] == "8" and params["data.num_calibration"] == "256"
    assert params["method.reconstruct"] == "mse"  # given explicitly: the preset does not override it
    artifacts = {item.path for item in mlflow.list_artifacts(run_id)}
    assert {"report.html", "quant_config.json", "bundle"} <= artifacts
    assert "model" not in artifacts  # no model.safetensors in this fake output: nothing to load, no model
    local = mlflow.download_artifacts(run_id, "report.html", str(tmp_path / "dl"))
    assert "report" in Path(local).read_text()
    assert mlflow.search_model_versions(f"name = '{tracked.mlflow_register_model}'") == []


def test_tracking_failure_is_a_warning_not_a_failure(client, tenant, settings, tmp_path) -> None:
    dead = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    job_id = _finished_job(client, tenant.name)
    output, bundle = _outputs(tmp_path)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        assert track_job(client.app.state.session_factory, dead, job_id, output, bundle) is None
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    with client.app.state.session_factory() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED
        assert [w["code"] for w in job.warnings] == ["tracking_failed"]
        message = job.warnings[0]["message"]
        assert "MLflow" in message and str(job_id) in message
        host, port = dead.mlflow_tracking_uri.removeprefix("http://").split(":")
        assert "http" not in message and host not in message and port not in message  # no internal URL
    text = client.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("mpq_tracking_failures_total"))
    assert float(line.split()[-1]) >= 1


def test_no_tracking_without_uri(client, tenant, settings, tmp_path) -> None:
    job_id = _finished_job(client, tenant.name)
    assert (
        track_job(
            client.app.state.session_factory,
            Settings(**{**settings.model_dump(), "mlflow_tracking_uri": ""}),
            job_id,
            tmp_path,
        )
        is None
    )


@pytest.mark.slow
def test_real_job_logs_its_run(mlflow_server, tmp_path) -> None:
    """A job run by ``mpq serve``'s embedded worker appears in MLflow with its real report.html."""
    from mlflow.tracking import MlflowClient

    from service.client import MPQClient

    from .server import ServerProcess

    server = ServerProcess(
        f"sqlite:///{tmp_path / 'mpq.db'}",
        tmp_path,
        MPQ_MLFLOW_TRACKING_URI=mlflow_server,
        MPQ_MLFLOW_EXPERIMENT="mpq-e2e-{tenant}",
    )
    server.start()
    try:
        with MPQClient(server.url, server.api_key or "") as client:
            job = client.submit(
                {
                    "model": {"name": "builtin:vit-digits"},
                    "data": {"num_calibration": 16, "batch_size": 16},
                    "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
                    "device": "cpu",
                }
            )
            job = client.wait(job.id, timeout=600)
            assert job.status == "succeeded", (job.error, server.log_tail())
            mlflow = MlflowClient(tracking_uri=mlflow_server)

            def finished_run_logged() -> Any:  # the run is logged right after the job's status is written
                experiment = mlflow.get_experiment_by_name("mpq-e2e-local")
                if experiment is None:
                    return None
                runs = mlflow.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
                return experiment if runs else None

            experiment = wait_until(finished_run_logged, 300, interval=0.5, message=server.log_tail)
            assert not client.get_job(job.id).warnings
            (run,) = mlflow.search_runs(
                [experiment.experiment_id], filter_string=f"tags.`mpq.job_id` = '{job.id}'"
            )
            assert run.data.metrics["quantized_top1"] == pytest.approx(job.metrics["quantized"]["top1"])
            assert run.data.metrics["avg_weight_bits"] == pytest.approx(job.metrics["bits"]["weights_avg"])
            assert {"report.html", "quant_config.json", "bundle"} <= {
                a.path for a in mlflow.list_artifacts(run.info.run_id)
            }
    finally:
        server.stop()
