"""Scale-out with real brokers and real worker processes (issue 6): Redis and RabbitMQ, PostgreSQL state.

Two ``mpq worker`` processes consume one queue. Jobs run exactly once and all complete; a worker SIGKILLed mid-job
loses it to the other worker, which resumes from the last checkpoint and reaches the same metrics as an
uninterrupted run with the same seed; a running job can be cancelled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth.service import create_key
from service.settings import Settings
from tests.components import missing_component
from tests.waiting import wait_until

from .conftest import drop_pg_schema, make_pg_schema_url
from .helpers import TINY_VIT, TINY_VIT_IMAGE, TINY_VIT_KWARGS, images_bytes, tiny_vit_weights, upload
from .hold import hold_env, release, wait_held

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BROKERS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
#: Seconds without a heartbeat (sent every 0.5 s) before the other worker's sweep re-queues a job. It only sets how
#: soon a killed worker's job is picked up; a short one would re-queue live jobs whenever a loaded machine delays a
#: heartbeat write for a few seconds (then a job runs twice and ``attempts == 1`` fails).
HEARTBEAT_TIMEOUT = 30.0


def _broker_reachable(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001
        return False


def _delete_queue(url: str, queue: str) -> None:
    from kombu import Connection, Queue

    try:
        with Connection(url, connect_timeout=3) as connection:
            Queue(queue, channel=connection.channel()).delete()
    except Exception as exc:  # noqa: BLE001 - best effort clean-up
        print(f"could not delete test queue {queue}: {exc}")


class Workers:
    """``mpq worker`` subprocesses sharing one queue, database and artifact folder."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            log = self.root / f"worker-{len(self.logs)}.log"
            self.logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "worker"],
                    env=self.env,
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_until(lambda: self._ready(self.logs[-count:]), 300, interval=0.2, message=self.tail)

    def _ready(self, logs: list[Path]) -> bool:
        assert all(p.poll() is None for p in self.processes), self.tail()
        return all("ready." in log.read_text(errors="replace") for log in logs)

    def pid_running(self, job_id: str) -> int | None:
        """Pid of the worker whose log says it started ``job_id`` (worker ids are ``celery:host:pid``)."""
        for log in self.logs:
            match = re.search(
                rf"job {job_id}: started by celery:[^:]+:(\d+)", log.read_text(errors="replace")
            )
            if match:
                return int(match.group(1))
        return None

    def starts(self, job_id: str) -> int:
        return sum(log.read_text(errors="replace").count(f"job {job_id}: started by") for log in self.logs)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            for log in self.logs
        )


@pytest.fixture(scope="module", params=list(BROKERS))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    broker = BROKERS[request.param]
    if not _broker_reachable(broker):
        missing_component(f"{request.param} not reachable at {broker}")
    database_url, schema = make_pg_schema_url(request.getfixturevalue("pg_server"))
    root = tmp_path_factory.mktemp(f"scaleout-{request.param}")
    queue = f"mpq-test-{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=database_url,
        artifact_dir=root / "artifacts",
        broker_url=broker,
        celery_queue=queue,
        max_upload_bytes=64 << 20,
    )
    env = {
        **os.environ,
        "MPQ_DATABASE_URL": database_url,
        "MPQ_ARTIFACT_DIR": str(root / "artifacts"),
        "MPQ_BROKER_URL": broker,
        "MPQ_CELERY_QUEUE": queue,
        "MPQ_HEARTBEAT_INTERVAL": "0.5",
        "MPQ_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "MPQ_WORKER_THREADS": "1",
        **hold_env(root / "holds"),
    }
    workers = Workers(env, root)
    with TestClient(create_app(settings)) as client:
        with client.app.state.session_factory() as session:
            key = create_key(session, f"scale-{uuid.uuid4().hex[:6]}").key
        client.headers["Authorization"] = f"Bearer {key}"
        try:
            workers.start(2)
            yield {"client": client, "workers": workers, "root": root, "holds": root / "holds"}
        finally:
            workers.stop()
            _delete_queue(broker, queue)
            drop_pg_schema(schema)


@pytest.fixture(scope="module")
def inputs(cluster) -> dict[str, str]:
    """A 2-block tiny ViT's weights and 16 calibration images, uploaded once per cluster."""
    client = cluster["client"]
    weights = upload(client, {}, tiny_vit_weights(depth=2)).json()["id"]
    images = upload(client, {}, images_bytes(n=16, size=TINY_VIT_IMAGE)).json()["id"]
    many = upload(client, {}, images_bytes(n=48, size=TINY_VIT_IMAGE, seed=1)).json()["id"]
    return {"weights": weights, "images": images, "many_images": many}


def _spec(inputs: dict[str, str], **method: Any) -> dict[str, Any]:
    return {
        "model": {
            "name": TINY_VIT,
            "arch_kwargs": {**TINY_VIT_KWARGS, "depth": 2},
            "weights_artifact_id": inputs["weights"],
        },
        "data": {"artifact_id": inputs["images"], "num_calibration": 16, "batch_size": 16},
        "method": {"quantizer": "minmax", "candidate_wbits": [4, 8], "candidate_abits": [8], **method},
        "seed": 3,
        "device": "cpu",
    }


def _wait(client: TestClient, job_id: str, timeout: float = 600) -> dict[str, Any]:
    """The job once it is succeeded, failed or cancelled."""

    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout, interval=0.2, message=f"job {job_id} to end")


def test_every_job_runs_exactly_once_and_completes(cluster, inputs) -> None:
    client, workers, holds = cluster["client"], cluster["workers"], cluster["holds"]
    # the first job holds its worker (prefetch 1, late ack: it takes nothing else), so the other worker runs the rest
    response = client.post("/v1/jobs", json={**_spec(inputs, wbits=4, abits=8), "name": "hold:sensitivity"})
    assert response.status_code == 202, response.text
    first = response.json()["id"]
    holder = wait_held(holds, first, message=workers.tail)
    ids = []
    for wbits in (8, 4, 8):
        response = client.post("/v1/jobs", json=_spec(inputs, wbits=wbits, abits=8))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    rest = [_wait(client, job_id) for job_id in ids]
    release(holds, first)
    jobs = [_wait(client, first), *rest]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4, [job["error"] for job in jobs]
    assert all(job["attempts"] == 1 for job in jobs)
    assert all(workers.starts(job_id) == 1 for job_id in [first, *ids]), workers.tail()
    assert workers.pid_running(first) == holder
    assert {workers.pid_running(job_id) for job_id in ids} == {p.pid for p in workers.processes} - {holder}


def test_killed_worker_job_resumes_on_the_other_and_matches(cluster, inputs) -> None:
    client, workers = cluster["client"], cluster["workers"]
    spec = _spec(inputs, budgets={"wbits": 7.6})
    reference = _wait(client, client.post("/v1/jobs", json=spec).json()["id"])
    assert reference["status"] == "succeeded", reference["error"]

    # held at the start of sensitivity (load and calibrate checkpointed) until its worker is killed
    job_id = client.post("/v1/jobs", json={**spec, "name": "hold:sensitivity"}).json()["id"]
    victim = wait_held(cluster["holds"], job_id, message=workers.tail)
    assert victim == workers.pid_running(job_id), workers.tail()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["stage"] == "sensitivity", job
    done = [stage["name"] for stage in job["stages"] if stage["status"] == "finished"]
    assert "load" in done, job["stages"]
    workers.kill(victim)
    job = _wait(client, job_id)
    assert job["status"] == "succeeded", (job["error"], workers.tail())
    assert job["attempts"] == 2
    assert workers.starts(job_id) == 2, workers.tail()  # once on the victim, once on the survivor
    stages = {stage["name"]: stage for stage in job["stages"]}
    assert all(stages[name]["status"] == "finished" for name in done)
    assert job["metrics"] == reference["metrics"]
    assert sum(p.poll() is None for p in workers.processes) == 1


def test_cancel_reaches_a_running_worker(cluster, inputs) -> None:
    client = cluster["client"]
    spec = _spec(inputs, budgets={"wbits": 7.6})
    spec["data"] = {"artifact_id": inputs["many_images"], "num_calibration": 48, "batch_size": 16}
    job_id = client.post("/v1/jobs", json={**spec, "name": "hold:sensitivity"}).json()["id"]
    wait_held(cluster["holds"], job_id, message=cluster["workers"].tail)  # mid-run, held until cancelled
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    job = _wait(client, job_id)
    assert job["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
