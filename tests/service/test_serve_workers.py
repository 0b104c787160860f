"""``mpq serve --workers 2``: two API processes on one port next to one embedded worker, a job runs once, and
/metrics sums the request counters of both processes on every scrape."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until

from .server import ServerProcess

pytestmark = pytest.mark.slow

SPEC = {
    "model": {"name": "builtin:vit-digits"},
    "data": {"num_calibration": 16, "batch_size": 16},
    "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
    "device": "cpu",
}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _requests_of(text: str, route: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mpq_http_requests_total" and sample.labels.get("route") == route
    )


def test_two_api_processes_one_worker_and_summed_metrics(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'mpq.db'}", tmp_path, "--workers", "2")
    server.start(timeout=300)
    try:

        def children() -> dict[str, list[int]] | None:  # the supervisor may still be starting the second one
            lines = {pid: _cmdline(pid) for pid in server.worker_pids()}
            found = {
                "api": [pid for pid, line in lines.items() if "spawn_main" in line],
                "embedded": [pid for pid, line in lines.items() if "service.worker.embedded" in line],
            }
            assert len(found["api"]) <= 2 and len(found["embedded"]) <= 1, lines
            return found if len(found["api"]) == 2 and len(found["embedded"]) == 1 else None

        found = wait_until(children, 120, message="two API processes and one embedded worker")
        api, embedded = found["api"], found["embedded"]
        headers = {"Authorization": f"Bearer {server.api_key}"}
        job = httpx.post(f"{server.url}/v1/jobs", headers=headers, json=SPEC, timeout=120)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        for _ in range(200):  # a new connection each: the kernel hands them to either process
            assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers).status_code == 200
        for _ in range(5):
            scrape = httpx.get(f"{server.url}/metrics").text
            assert _requests_of(scrape, "/v1/jobs/{job_id}") == 200  # the same sum, whoever answers

        def ended() -> dict | None:
            state = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers).json()
            return None if state["status"] in ("queued", "running") else state

        state = wait_until(ended, 600, interval=0.5, message=lambda: f"the job to end\n{server.log_tail()}")
        assert state["status"] == "succeeded" and state["attempts"] == 1, state
        assert "mpq_jobs" in httpx.get(f"{server.url}/metrics").text
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        server.stop()
    for pid in [*api, *embedded]:  # gone, or a zombie (empty command line) waiting to be reaped
        wait_until(
            lambda pid=pid: not Path(f"/proc/{pid}").exists() or _cmdline(pid) == "",
            60,
            message=f"process {pid} to exit with the server",
        )
    assert not any(Path(os.environ.get("TMPDIR", "/tmp")).glob("mpq-metrics-*/counter_*"))
