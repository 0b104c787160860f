"""The typed client (sync and async) against a real HTTP server: pydantic models, typed exceptions, automatic
Idempotency-Key, iter_jobs over cursors, wait() on the event stream, sha256-checked download; and the README's
integration examples (pipeline script, webhook receiver) run as written."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from quant.config import STAGES
from service.artifact.storage import BlobStore
from service.auth.service import create_key, hash_key
from service.client import (
    APIError,
    AsyncMPQClient,
    AuthenticationError,
    ChecksumMismatch,
    IdempotencyKeyReused,
    Job,
    JobNotFinished,
    JobNotFound,
    MPQClient,
    NotFoundError,
    ValidationError,
)
from service.db import utcnow
from service.models import APIKey, JobStatus
from service.models import Job as JobRow
from service.settings import Settings
from service.webhooks.delivery import DeliveryWorker
from tests.waiting import wait_until

from .live import LiveServer, drive_job
from .proxy import TamperingProxy, flip_byte
from .server import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
SPEC = {"model": {"name": "builtin:vit-digits"}, "method": {"quantizer": "minmax", "wbits": 8, "abits": 8}}


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        webhook_allow_private=True,
    )


@pytest.fixture(scope="module")
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def key(live: LiveServer) -> str:
    with live.app.state.session_factory() as session:
        return create_key(session, f"client-{uuid.uuid4().hex[:8]}").key


class RecordingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def test_models_typed_errors_and_automatic_idempotency_key(live, key) -> None:
    transport = RecordingTransport()
    with MPQClient(live.url, key, transport=transport) as client:
        job = client.submit(SPEC)
        assert isinstance(job, Job) and job.status == "queued" and job["id"] == job.id
        assert job.stages is not None and [s.name for s in job.stages] == list(STAGES)
        sent = transport.requests[-1].headers["idempotency-key"]
        assert uuid.UUID(sent)  # a fresh key per logical submit
        again = client.submit(SPEC)
        assert again.id != job.id and transport.requests[-1].headers["idempotency-key"] != sent
        # a caller retrying one submit passes its key: the first job comes back
        first = client.submit(SPEC, idempotency_key="build-42")
        assert client.submit(SPEC, idempotency_key="build-42").id == first.id
        with pytest.raises(IdempotencyKeyReused) as reused:
            client.submit({**SPEC, "name": "other"}, idempotency_key="build-42")
        assert reused.value.status_code == 422 and isinstance(reused.value, ValidationError)
        with pytest.raises(JobNotFound) as missing:
            client.get_job(str(uuid.uuid4()))
        assert isinstance(missing.value, NotFoundError) and missing.value.code == "job_not_found"
        with pytest.raises(JobNotFinished):
            client.report(job.id)
        with pytest.raises(ValidationError) as invalid:
            client.submit({"model": {"name": ""}})
        assert "model.name" in invalid.value.message
        cancelled = client.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.done
    with MPQClient(live.url, "mpq_wrong") as client, pytest.raises(AuthenticationError):
        client.get_job(job.id)


def _insert_jobs(live: LiveServer, key: str, n: int, name: str) -> list[str]:
    with live.app.state.session_factory() as session:
        tenant_id = session.scalar(select(APIKey.tenant_id).where(APIKey.key_hash == hash_key(key)))
        rows = [JobRow(tenant_id=tenant_id, spec={}, name=name, status=JobStatus.QUEUED) for _ in range(n)]
        session.add_all(rows)
        session.commit()
        return [str(row.id) for row in rows]


def test_iter_jobs_follows_cursors(live, key) -> None:
    ids = _insert_jobs(live, key, 23, "batch")
    _insert_jobs(live, key, 2, "other")
    with MPQClient(live.url, key) as client:
        seen = [job.id for job in client.iter_jobs(page_size=5, name="batch")]
        assert sorted(seen) == sorted(ids) and len(seen) == 23
        page = client.list_jobs(limit=3, name="batch")
        assert len(page.data) == 3 and page.has_more and page.next_cursor
        assert len(list(client.iter_jobs(name="other", created_before=utcnow()))) == 2


def test_wait_follows_the_event_stream(live, key, tmp_path) -> None:
    with MPQClient(live.url, key) as client:
        job = client.submit(SPEC)
        driver = threading.Thread(target=drive_job, args=(live.app, uuid.UUID(job.id), tmp_path / "w"))
        updates: list[Job] = []
        events = []
        driver.start()
        final = client.wait(job.id, timeout=300, on_update=updates.append, on_event=events.append)
        driver.join()
    assert final.status == "succeeded" and final.progress == 1.0 and final.stages is not None
    progress = [u.progress for u in updates]
    assert progress == sorted(progress)
    assert {e.event for e in events} >= {"status", "stage", "progress"}
    assert events[-1].event == "status" and events[-1].data["status"] == "succeeded"


def _finished_job_with_bundle(live: LiveServer, key: str, *, corrupt: bool = False) -> str:
    (job_id,) = _insert_jobs(live, key, 1, "bundled")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("quant_config.json", '{"bits": 4}')
        archive.writestr("model.safetensors", b"\0" * 64)
    payload = buffer.getvalue()
    bundle = BlobStore(live.app.state.settings.artifact_dir).job_dir(uuid.UUID(job_id)) / "bundle.zip"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with live.app.state.session_factory() as session:
        session.execute(
            update(JobRow)
            .where(JobRow.id == uuid.UUID(job_id))
            .values(
                status=JobStatus.SUCCEEDED,
                bundle_sha256=("0" * 64) if corrupt else digest,
                bundle_size=len(payload),
                result={},
            )
        )
        session.commit()
    return job_id


def test_download_checks_the_sha256(live, key, tmp_path) -> None:
    good = _finished_job_with_bundle(live, key)
    bad = _finished_job_with_bundle(live, key, corrupt=True)
    with MPQClient(live.url, key) as client:
        out = client.download(good, tmp_path / "good")
        assert (out / "quant_config.json").read_text() == '{"bits": 4}'
        zipped = client.download(good, tmp_path / "bundle.zip", extract=False)
        assert zipfile.is_zipfile(zipped)
        with pytest.raises(ChecksumMismatch, match="sha256") as raised:
            client.download(bad, tmp_path / "bad")
    assert raised.value.code == "checksum_mismatch" and "X-Content-SHA256" in raised.value.message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle.zip", "good"]  # no temporary files


@pytest.mark.parametrize("extract", [True, False], ids=["extract", "zip"])
def test_download_behind_a_proxy_that_drops_the_header_and_flips_a_byte(live, key, tmp_path, extract) -> None:
    job_id = _finished_job_with_bundle(live, key)
    destination = tmp_path / ("out" if extract else "bundle.zip")
    with TamperingProxy(live.url, strip=("X-Content-SHA256",), corrupt=flip_byte) as proxy:
        with MPQClient(proxy.url, key) as client, pytest.raises(ChecksumMismatch) as raised:
            client.download(job_id, destination, extract=extract)
        assert proxy.tampered == 1
    error = raised.value
    assert error.code == "checksum_mismatch" and "bundle_sha256" in error.message
    with live.app.state.session_factory() as session:
        assert error.details["expected"] == session.get(JobRow, uuid.UUID(job_id)).bundle_sha256
    assert list(tmp_path.iterdir()) == []  # no partial model.safetensors, no temporary file


def test_download_without_the_header_is_checked_against_the_job(live, key, tmp_path) -> None:
    job_id = _finished_job_with_bundle(live, key)
    with TamperingProxy(live.url, strip=("X-Content-SHA256",)) as proxy:
        with MPQClient(proxy.url, key) as client:
            out = client.download(job_id, tmp_path / "out")
        with MPQClient(live.url, key) as direct:
            job = direct.get_job(job_id)
    assert proxy.tampered == 1 and job.bundle_sha256
    assert (out / "quant_config.json").read_text() == '{"bits": 4}'
    assert (out / "model.safetensors").read_bytes() == b"\0" * 64
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]

    async def flipped() -> None:
        with TamperingProxy(live.url, strip=("X-Content-SHA256",), corrupt=flip_byte) as bad:
            async with AsyncMPQClient(bad.url, key) as client:
                await client.download(job_id, tmp_path / "async-out")

    with pytest.raises(ChecksumMismatch, match="bundle_sha256"):
        asyncio.run(flipped())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_async_client(live, key, tmp_path) -> None:
    good = _finished_job_with_bundle(live, key)

    async def scenario() -> tuple[Job, list[str], Path]:
        async with AsyncMPQClient(live.url, key) as client:
            job = await client.submit(SPEC)
            driver = threading.Thread(target=drive_job, args=(live.app, uuid.UUID(job.id), tmp_path / "w"))
            driver.start()
            final = await client.wait(job.id, timeout=300)
            await asyncio.to_thread(driver.join)
            ids = [j.id async for j in client.iter_jobs(page_size=2)]
            path = await client.download(good, tmp_path / "async-bundle")
            with pytest.raises(JobNotFound):
                await client.get_job(str(uuid.uuid4()))
            return final, ids, path

    final, ids, path = asyncio.run(scenario())
    assert final.status == "succeeded" and final.id in ids and good in ids
    assert (path / "model.safetensors").stat().st_size == 64


def test_webhook_receiver_example_verifies_deliveries(live, key) -> None:
    port = free_port()
    with MPQClient(live.url, key) as client:
        hook = client.create_webhook(f"http://127.0.0.1:{port}/", ["job.cancelled"])
        env = {**os.environ, "MPQ_WEBHOOK_SECRET": hook.secret, "PYTHONPATH": str(REPO)}
        receiver = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "webhook_receiver.py"), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

        def listening() -> bool:
            assert receiver.poll() is None, "the webhook receiver exited"
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.HTTPError:
                return False
            return True

        try:
            wait_until(listening, 120, interval=0.1, message="the webhook receiver to listen")
            job = client.submit(SPEC)
            client.cancel(job.id)
            sender = DeliveryWorker(live.app.state.session_factory, live.app.state.settings)
            try:
                assert sender.run_once() >= 1
            finally:
                sender.stop()
            (delivery,) = client.deliveries(hook.id)
            assert delivery.status == "succeeded" and delivery.last_status_code == 204
        finally:
            receiver.terminate()
            out, _ = receiver.communicate(timeout=60)
    webhook_id, event_type, data = out.splitlines()[0].split(" ", 2)
    assert webhook_id == delivery.webhook_id and event_type == "job.cancelled" and job.id in data


@pytest.mark.slow
def test_readme_pipeline_script_runs_as_written(tmp_path: Path) -> None:
    """examples/pipeline.py (the README's 10-line script) against a real server with its embedded worker."""
    from quant.data import ImageSet, load_dataset, save_imageset
    from quant.models import builtin_spec

    readme = (REPO / "README.md").read_text()
    script = (REPO / "examples" / "pipeline.py").read_text()
    if "Integrate with your pipeline" in readme:
        assert script.strip() in readme, "README's pipeline example differs from examples/pipeline.py"
    spec = builtin_spec("vit-digits")
    weights = REPO / "quant" / "builtin" / "assets" / spec["weights"]
    calib = load_dataset("builtin:digits", split="calib", model_name="builtin:vit-digits")
    save_imageset(tmp_path / "calib.safetensors", ImageSet(calib.images[:16]))
    import json

    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "model": {"name": spec["arch"], "arch_kwargs": spec["arch_kwargs"]},
                "data": {"num_calibration": 16, "batch_size": 16},
                "method": {"quantizer": "minmax", "wbits": 8, "abits": 8},
                "device": "cpu",
            }
        )
    )
    server = ServerProcess(f"sqlite:///{tmp_path / 'mpq.db'}", tmp_path)
    server.start()
    try:
        env = {
            **os.environ,
            "MPQ_API_URL": server.url,
            "MPQ_API_KEY": server.api_key or "",
            "PYTHONPATH": str(REPO),
        }
        result = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "pipeline.py"),
                str(tmp_path / "job.json"),
                str(weights),
                str(tmp_path / "calib.safetensors"),
                str(tmp_path / "out"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (result.stdout, result.stderr, server.log_tail())
        assert "succeeded 100%" in result.stdout and "bundle:" in result.stdout
        assert (tmp_path / "out" / "quant_config.json").is_file()
        assert (tmp_path / "out" / "model.safetensors").is_file()
    finally:
        server.stop()


def test_api_error_is_the_base_of_every_client_error() -> None:
    for cls in (AuthenticationError, ChecksumMismatch, IdempotencyKeyReused, JobNotFinished, JobNotFound):
        assert issubclass(cls, APIError)


def test_client_changes_rotates_and_resends_webhooks(live, key) -> None:
    with MPQClient(live.url, key) as client:
        hook = client.create_webhook("http://127.0.0.1:9/hook", ["job.cancelled"])
        paused = client.update_webhook(hook.id, enabled=False, events=["job.cancelled", "job.failed"])
        assert paused.enabled is False and paused.events == ["job.cancelled", "job.failed"]
        assert paused.failing_since is None and "paused" in paused.disabled_reason
        rotated = client.rotate_webhook_secret(hook.id, overlap_seconds=600)
        assert rotated.secret != hook.secret and rotated.previous_secret_expires_at is not None
        job = client.submit(SPEC)
        client.cancel(job.id)
        (delivery,) = client.deliveries(hook.id)
        resent = client.retry_delivery(hook.id, delivery.id)
        assert resent.id == delivery.id and resent.status == "pending" and resent.webhook_id == delivery.webhook_id
        with pytest.raises(NotFoundError):
            client.retry_delivery(hook.id, str(uuid.uuid4()))
