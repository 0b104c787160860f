"""End to end over real HTTP: ``mpq serve`` (uvicorn + embedded worker process) on SQLite and PostgreSQL.

Upload the built-in ViT's weights and calibration/evaluation images, run a mixed-precision job to completion,
download the bundle, rebuild it with ``quant.load_quantized`` and reproduce the reported metrics; then
reallocate with a new budget and see the new job finish without running a sensitivity stage. A restart test
SIGKILLs the server while a job runs and checks that the restarted server completes it from its checkpoints.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import MPQClient
from service.worker.recovery import pid_alive
from tests.waiting import wait_until

from .conftest import drop_pg_schema, make_pg_schema_url
from .hold import hold_env, wait_held
from .server import ServerProcess

pytestmark = pytest.mark.slow

CALIB_IMAGES = 16
EVAL_IMAGES = 32


@pytest.fixture(scope="module")
def vit_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The built-in ViT as a timm architecture + weights file, and small calibration/evaluation image files."""
    from quant.data import ImageSet, load_dataset, save_imageset
    from quant.models import builtin_spec

    spec = builtin_spec("vit-digits")
    weights = Path(__import__("quant").__file__).resolve().parent / "builtin" / "assets" / spec["weights"]
    root = tmp_path_factory.mktemp("inputs")
    calib = load_dataset("builtin:digits", split="calib", model_name="builtin:vit-digits")
    test = load_dataset("builtin:digits", split="test", model_name="builtin:vit-digits")
    save_imageset(root / "calib.safetensors", ImageSet(calib.images[:CALIB_IMAGES]))
    save_imageset(root / "eval.safetensors", ImageSet(test.images[:EVAL_IMAGES], test.labels[:EVAL_IMAGES]))
    return {
        "builtin": "builtin:vit-digits",
        "arch": spec["arch"],
        "arch_kwargs": spec["arch_kwargs"],
        "weights": weights,
        "calib": root / "calib.safetensors",
        "eval": root / "eval.safetensors",
    }


def _server(database_url: str, tmp_path: Path) -> ServerProcess:
    """``mpq serve`` whose embedded worker holds ``hold:<stage>`` jobs (:mod:`tests.service.hold`)."""
    server = ServerProcess(
        database_url,
        tmp_path,
        MPQ_WORKER_THREADS=str(max(1, (os.cpu_count() or 2) - 1)),
        **hold_env(tmp_path / "holds"),
    )
    server.start()
    assert server.api_key, f"mpq serve did not print a generated key:\n{server.log_tail()}"
    return server


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One SQLite server for the module: later tests reuse its warm validation cache and uploads (the first
    validate_config of a configuration costs tens of seconds on a small machine)."""
    root = tmp_path_factory.mktemp("sqlite-server")
    server = _server(f"sqlite:///{root / 'mpq.db'}", root)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_server")
        return
    url, schema = make_pg_schema_url(request.getfixturevalue("pg_server"))
    pg_server = _server(url, tmp_path)
    yield pg_server
    pg_server.stop()
    drop_pg_schema(schema)


def _job_spec(
    ids: dict[str, str], inputs: dict[str, Any], *, uploaded_weights: bool = False, **method: Any
) -> dict[str, Any]:
    """The built-in ViT by name, or (``uploaded_weights``) its timm architecture with its weights uploaded."""
    model: dict[str, Any] = {"name": inputs["builtin"]}
    if uploaded_weights:
        model = {
            "name": inputs["arch"],
            "arch_kwargs": inputs["arch_kwargs"],
            "weights_artifact_id": ids["weights"],
        }
    return {
        "name": "e2e",
        "model": model,
        "data": {
            "artifact_id": ids["calib"],
            "eval_artifact_id": ids["eval"],
            "num_calibration": CALIB_IMAGES,
            "batch_size": CALIB_IMAGES,
        },
        "method": {"quantizer": "minmax", "candidate_wbits": [4, 8], "candidate_abits": [8], **method},
        "seed": 0,
        "device": "cpu",
    }


def _upload_inputs(client: MPQClient, inputs: dict[str, Any]) -> dict[str, str]:
    ids = {
        "weights": client.upload(inputs["weights"])["id"],
        "calib": client.upload(inputs["calib"])["id"],
        "eval": client.upload(inputs["eval"])["id"],
    }
    return ids


def _reproduce_metrics(bundle: Path, inputs: dict[str, Any], metrics: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import load_file

    from quant import load_quantized
    from quant.evaluate import compare_logits, predict_logits
    from quant.models import build_model

    data = load_file(str(inputs["eval"]))
    qmodel = load_quantized(bundle).eval()
    fmodel = build_model(inputs["builtin"]).eval()  # the same weights as inputs["weights"]
    with torch.no_grad():
        quant_logits = predict_logits(qmodel, data["images"], CALIB_IMAGES)
        float_logits = predict_logits(fmodel, data["images"], CALIB_IMAGES)
    measured = compare_logits(float_logits, quant_logits, data["labels"])
    assert measured["top1"] == pytest.approx(metrics["quantized"]["top1"], abs=1e-9)
    assert measured["float_top1"] == pytest.approx(metrics["float"]["top1"], abs=1e-9)
    assert measured["agreement"] == pytest.approx(metrics["quantized"]["agreement"], abs=1e-9)
    assert measured["kl"] == pytest.approx(metrics["quantized"]["kl"], rel=1e-4, abs=1e-7)


def test_mixed_precision_job_end_to_end(
    server: ServerProcess, tmp_path: Path, vit_inputs: dict[str, Any]
) -> None:
    with MPQClient(server.url, server.api_key) as client:
        ids = _upload_inputs(client, vit_inputs)
        job = client.create_job(_job_spec(ids, vit_inputs, budgets={"wbits": 6.0}))
        assert job["status"] == "queued"
        seen: list[tuple[str, float, str | None]] = []
        job = client.wait(
            job["id"],
            timeout=300,
            interval=0.2,
            on_update=lambda j: seen.append((j["status"], j["progress"], j["stage"])),
        )
        assert job["status"] == "succeeded", (job["error"], server.log_tail())
        assert job["progress"] == 1.0 and job["attempts"] == 1
        running = [entry for entry in seen if entry[0] == "running"]
        assert running, "the job was never observed running"
        progress = [entry[1] for entry in running]
        assert progress == sorted(progress), "progress must not go backwards"
        stages = {stage["name"]: stage for stage in job["stages"]}
        for name in ("load", "sensitivity", "allocate", "evaluate", "export"):
            stage = stages[name]
            assert stage["status"] == "finished", stage
            assert (
                stage["started_at"] and stage["finished_at"] and stage["started_at"] <= stage["finished_at"]
            )
            assert stage["output"] is not None
        assert stages["reconstruct"]["status"] == "skipped"

        report = client.report(job["id"])
        wbits = {layer["wbits"] for layer in report["layers"]}
        assert wbits <= {4, 8, 16} and {4, 8} <= wbits, f"expected a mix of 4 and 8 bits, got {wbits}"
        assert all(layer["sensitivity"] is not None for layer in report["layers"] if layer["wbits"] in (4, 8))
        metrics = report["result"]["metrics"]
        assert metrics["bits"]["weights_avg"] <= 6.0 + 1e-6
        assert job["metrics"] == metrics

        bundle = client.download(job["id"], tmp_path / "bundle")
        assert {"model.safetensors", "quant_config.json", "report.json"} <= {p.name for p in bundle.iterdir()}
        _reproduce_metrics(bundle, vit_inputs, metrics)

        child = client.reallocate(job["id"], {"wbits": 5.0})
        assert child["parent_id"] == job["id"]
        child = client.wait(child["id"], timeout=300, interval=0.2)
        assert child["status"] == "succeeded", (child["error"], server.log_tail())
        child_stages = {stage["name"]: stage for stage in child["stages"]}
        sensitivity = child_stages["sensitivity"]
        assert sensitivity["status"] == "reused" and sensitivity["reused_from"] == job["id"]
        assert sensitivity["started_at"] is None and sensitivity["finished_at"] is None
        assert sensitivity["output"] == stages["sensitivity"]["output"]
        assert child_stages["allocate"]["status"] == "finished"
        child_metrics = client.report(child["id"])["result"]["metrics"]
        assert child_metrics["bits"]["weights_avg"] <= 5.0 + 1e-6
        assert child_metrics["bits"]["weights_avg"] < metrics["bits"]["weights_avg"]
        _reproduce_metrics(client.download(child["id"], tmp_path / "child"), vit_inputs, child_metrics)

        listed = client.list_jobs(status="succeeded")
        assert {j["id"] for j in listed["data"]} == {job["id"], child["id"]}


def test_job_with_uploaded_weights_of_the_builtin_architecture(
    sqlite_server: ServerProcess, tmp_path: Path, vit_inputs: dict[str, Any]
) -> None:
    with MPQClient(sqlite_server.url, sqlite_server.api_key) as client:
        ids = _upload_inputs(client, vit_inputs)
        job = client.create_job(_job_spec(ids, vit_inputs, uploaded_weights=True, budgets={"wbits": 6.0}))
        job = client.wait(job["id"], timeout=300, interval=0.2)
        assert job["status"] == "succeeded", (job["error"], sqlite_server.log_tail())
        bundle = client.download(job["id"], tmp_path / "bundle")
        _reproduce_metrics(bundle, vit_inputs, client.report(job["id"])["result"]["metrics"])


def test_server_killed_mid_job_resumes_after_restart(
    sqlite_server: ServerProcess, vit_inputs: dict[str, Any]
) -> None:
    server = sqlite_server
    with MPQClient(server.url, server.api_key) as client:
        ids = _upload_inputs(client, vit_inputs)
        spec = {**_job_spec(ids, vit_inputs, budgets={"wbits": 6.0}), "name": "hold:sensitivity"}
        job = client.create_job(spec)  # held at the start of sensitivity: load and calibrate are checkpointed
        wait_held(
            server.root / "holds",
            job["id"],
            message=lambda: f"the job to reach sensitivity\n{server.log_tail()}",
        )
        current = client.get_job(job["id"])
        assert current["status"] == "running" and current["stage"] == "sensitivity", current
        finished = [s for s in current["stages"] if s["status"] == "finished"]
        assert {s["name"] for s in finished} >= {"load", "calibrate"}, current["stages"]
        workers = server.worker_pids()
        checkpoint = {s["name"]: s["finished_at"] for s in finished}
    server.kill()
    killed_at = dt.datetime.now(dt.UTC)
    wait_until(  # the embedded worker dies with its server
        lambda: not any(pid_alive(pid) for pid in workers),
        60,
        message="the embedded worker to die with its server",
    )

    server.start()
    with MPQClient(server.url, server.api_key) as client:
        job = client.wait(job["id"], timeout=300, interval=0.2)
        assert job["status"] == "succeeded", (job["error"], server.log_tail())
        assert job["attempts"] == 2
        stages = {s["name"]: s for s in job["stages"]}
        for name, finished_at in checkpoint.items():  # checkpointed stages were not run again
            assert stages[name]["finished_at"] == finished_at
            assert finished_at < killed_at  # the typed client returns datetimes
        assert all(s["status"] in ("finished", "skipped") for s in job["stages"])


def test_cli_client_commands(
    sqlite_server: ServerProcess, tmp_path: Path, vit_inputs: dict[str, Any], monkeypatch, capsys
) -> None:
    """``mpq submit``, ``mpq status`` and ``mpq download`` against the running server."""
    import json

    from service.cli import main

    monkeypatch.setenv("MPQ_API_URL", sqlite_server.url)
    monkeypatch.setenv("MPQ_API_KEY", sqlite_server.api_key or "")
    spec = _job_spec({"calib": "", "eval": ""}, vit_inputs, budgets={"wbits": 6.0})
    spec["data"] = {"num_calibration": CALIB_IMAGES, "batch_size": CALIB_IMAGES}
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec))
    assert (
        main(
            [
                "submit",
                str(spec_path),
                "--data",
                str(vit_inputs["calib"]),
                "--eval-data",
                str(vit_inputs["eval"]),
            ]
        )
        == 0
    )
    job_id = capsys.readouterr().out.strip()
    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["id"] == job_id and status["spec"]["data"]["artifact_id"]
    with MPQClient(sqlite_server.url, sqlite_server.api_key) as client:
        client.cancel(job_id)
        done = client.list_jobs(status="succeeded")["data"]
    assert done, "an earlier test of this module should have left a finished job"
    assert main(["download", done[0]["id"], "-o", str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "model.safetensors").is_file()
    assert main(["status", str(uuid.uuid4())]) == 1
    assert "job_not_found" in capsys.readouterr().err
