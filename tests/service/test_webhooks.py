"""Webhooks per Standard Webhooks against a real HTTP receiver on 127.0.0.1: signatures verified with the
``standardwebhooks`` library, retries with the same webhook-id and exponential backoff, URL rules, and a pending
delivery that survives a killed server. Outages, disabling, rotation, PATCH and resends: test_webhooks_outage.py
and test_webhooks_manage.py."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from service.db import make_engine, make_session_factory, utcnow
from service.job.repository import JobRepository
from service.models import Job, JobStatus, Tenant, WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from service.webhooks.backoff import retry_delay
from service.webhooks.delivery import DeliveryWorker
from tests.waiting import wait_until

from .clock import FakeClock
from .conftest import error_of
from .server import ServerProcess, free_port
from .webhook_receiver import Receiver

BASE = 2.0  # backoff base of these tests, in seconds


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """No background delivery loop: each test drives ``DeliveryWorker.run_once()`` itself."""
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        webhook_allow_private=True,
        webhook_backoff_base=BASE,
        webhook_backoff_max=60.0,
        webhook_max_attempts=5,
        webhook_timeout=5.0,
    )


@pytest.fixture
def sender(client: TestClient, settings: Settings) -> Iterator[DeliveryWorker]:
    worker = DeliveryWorker(client.app.state.session_factory, settings)
    yield worker
    worker.stop()


def _job(client: TestClient, tenant_name: str, status: JobStatus = JobStatus.QUEUED) -> uuid.UUID:
    with client.app.state.session_factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant_name))
        job = Job(tenant_id=tenant_id, spec={}, status=status, name="nightly")
        JobRepository(session).add(job)
        session.commit()
        return job.id


def _register(client: TestClient, tenant, url: str, events: list[str] | None = None) -> dict:
    body = {"url": url, **({"events": events} if events else {})}
    response = client.post("/v1/webhooks", headers=tenant.headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _make_due(client: TestClient) -> None:
    """Skip the backoff wait (the tests check the scheduled time instead of sleeping through it)."""
    with client.app.state.session_factory() as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
        session.commit()


def test_signed_deliveries_verify_with_the_library(client, tenant, sender) -> None:
    with Receiver([200]) as receiver:
        endpoint = _register(client, tenant, receiver.url, ["job.cancelled", "job.failed"])
        assert endpoint["secret"].startswith("whsec_") and endpoint["enabled"] is True
        listed = client.get("/v1/webhooks", headers=tenant.headers).json()["data"]
        assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
        cancelled = _job(client, tenant.name)
        assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=tenant.headers).status_code == 202
        failed = _job(client, tenant.name, JobStatus.RUNNING)
        with client.app.state.session_factory() as session:  # a worker's orphan recovery fails the job
            session.execute(update(Job).where(Job.id == failed).values(lease_id="lease-1"))
            error = {"code": "worker_lost", "message": "the worker died", "details": {}}
            assert JobRepository(session).fail_orphan(failed, lease_id="lease-1", error=error)
            session.commit()
        assert sender.run_once() == 2
        assert len(receiver.received) == 2
        by_type = {}
        for headers, body in receiver.received:
            payload = Webhook(endpoint["secret"]).verify(body, headers)  # raises on a bad signature
            assert headers["webhook-id"].startswith("msg_")
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 300
            assert headers["webhook-signature"].startswith("v1,")
            by_type[payload["type"]] = payload
        assert by_type["job.cancelled"]["data"]["job_id"] == str(cancelled)
        assert by_type["job.cancelled"]["data"]["status"] == "cancelled"
        assert by_type["job.failed"]["data"] == {
            "job_id": str(failed),
            "status": "failed",
            "name": "nightly",
            "message": "the worker died",
            "error": {"code": "worker_lost", "message": "the worker died"},
        }
        with pytest.raises(Exception, match="signature"):
            headers, body = receiver.received[0]
            Webhook(endpoint["secret"]).verify(body.replace("cancelled", "succeeded"), headers)
        # not subscribed: a succeeded job sends nothing here
        deliveries = client.get(f"/v1/webhooks/{endpoint['id']}/deliveries", headers=tenant.headers).json()
        assert {d["status"] for d in deliveries["data"]} == {"succeeded"}
        assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in deliveries["data"])


def test_retries_keep_the_webhook_id_and_back_off(client, tenant, settings) -> None:
    clock = FakeClock()  # the backoff is checked on the sender's own clock, not on how fast this machine is
    sender = DeliveryWorker(client.app.state.session_factory, settings, clock=clock)
    try:
        with Receiver([500, 500, 200]) as receiver:
            endpoint = _register(client, tenant, receiver.url)
            job_id = _job(client, tenant.name)
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers).status_code == 202
            url = f"/v1/webhooks/{endpoint['id']}/deliveries"
            clock.reset()  # the delivery is due now
            for attempt in (1, 2):
                before = clock.now
                assert sender.run_once() == 1
                (delivery,) = client.get(url, headers=tenant.headers).json()["data"]
                assert delivery["status"] == "pending" and delivery["attempts"] == attempt
                assert delivery["last_status_code"] == 500
                wait = (dt.datetime.fromisoformat(delivery["next_attempt_at"]) - before).total_seconds()
                ceiling = BASE * 2 ** (attempt - 1)
                # exponential, jittered (the database keeps microseconds)
                assert 0.5 * ceiling - 1e-3 <= wait <= ceiling + 1e-3, (attempt, wait)
                assert sender.run_once() == 0  # not due yet
                clock.advance(ceiling)
            assert sender.run_once() == 1
    finally:
        sender.stop()
    ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert len(ids) == 3 and len(set(ids)) == 1
    bodies = {body for _, body in receiver.received}
    assert len(bodies) == 1  # the same message every time
    (delivery,) = client.get(url, headers=tenant.headers).json()["data"]
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
    assert delivery["webhook_id"] == ids[0] and delivery["next_attempt_at"] is None


def test_backoff_schedule_spans_hours_by_default() -> None:
    defaults = Settings()
    ceilings = [
        retry_delay(n, base=defaults.webhook_backoff_base, maximum=defaults.webhook_backoff_max, rng=_Top())
        for n in range(1, defaults.webhook_max_attempts)
    ]
    assert ceilings[:3] == [30.0, 60.0, 120.0] and max(ceilings) == 3600.0
    assert sum(ceilings) / 3600 > 8  # retries go on for hours
    low = retry_delay(3, base=30, maximum=3600, rng=_Bottom())
    assert low == 60.0  # jitter keeps at least half of the ceiling


class _Top:
    def random(self) -> float:
        return 1.0


class _Bottom:
    def random(self) -> float:
        return 0.0


def test_delete_and_tenant_isolation(client, make_tenant) -> None:
    alice, bob = make_tenant("alice"), make_tenant("bob")
    endpoint = _register(client, alice, "http://127.0.0.1:9/hook")
    assert client.get(f"/v1/webhooks/{endpoint['id']}", headers=bob.headers).status_code == 404
    assert client.delete(f"/v1/webhooks/{endpoint['id']}", headers=bob.headers).status_code == 404
    assert client.delete(f"/v1/webhooks/{endpoint['id']}", headers=alice.headers).status_code == 204
    response = client.get(f"/v1/webhooks/{endpoint['id']}", headers=alice.headers)
    assert response.status_code == 404 and error_of(response)["code"] == "webhook_not_found"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:8080/hook", "webhook_url_not_public"),
        ("http://10.1.2.3/hook", "webhook_url_not_public"),
        ("http://192.168.0.10/hook", "webhook_url_not_public"),
        ("http://169.254.169.254/latest", "webhook_url_not_public"),
        ("http://[::1]:9000/hook", "webhook_url_not_public"),
        ("http://[::ffff:127.0.0.1]/hook", "webhook_url_not_public"),
        ("http://localhost/hook", "webhook_url_not_public"),
        ("ftp://93.184.216.34/hook", "invalid_webhook_url"),
        ("file:///etc/passwd", "invalid_webhook_url"),
        ("http://user:pw@93.184.216.34/", "invalid_webhook_url"),
    ],
)
def test_private_and_non_http_urls_are_refused(client, tenant, settings, url, code) -> None:
    strict = settings.model_copy(update={"webhook_allow_private": False})
    client.app.state.settings = strict
    try:
        response = client.post("/v1/webhooks", headers=tenant.headers, json={"url": url})
    finally:
        client.app.state.settings = settings
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == code


def test_public_address_and_event_validation(client, tenant, settings) -> None:
    client.app.state.settings = settings.model_copy(update={"webhook_allow_private": False})
    try:
        ok = client.post("/v1/webhooks", headers=tenant.headers, json={"url": "https://93.184.216.34/hook"})
    finally:
        client.app.state.settings = settings
    assert ok.status_code == 201 and ok.json()["events"] == ["job.cancelled", "job.failed", "job.succeeded"]
    bad = client.post(
        "/v1/webhooks",
        headers=tenant.headers,
        json={"url": "https://93.184.216.34/", "events": ["job.exploded"]},
    )
    assert bad.status_code == 422 and "events" in error_of(bad)["message"]


@pytest.mark.slow
def test_pending_delivery_survives_a_killed_server(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'mpq.db'}"
    port = free_port()  # the receiver is down at first: connection refused
    server = ServerProcess(
        database,
        tmp_path,
        MPQ_WEBHOOK_ALLOW_PRIVATE="true",
        MPQ_WEBHOOK_BACKOFF_BASE="0.5",
        MPQ_WEBHOOK_BACKOFF_MAX="1",
        MPQ_WEBHOOK_POLL_INTERVAL="0.1",
        MPQ_EMBEDDED_WORKER="false",
    )
    server.start()
    try:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        url = f"http://127.0.0.1:{port}/hook"
        endpoint = httpx.post(f"{server.url}/v1/webhooks", headers=headers, json={"url": url}).json()
        engine = make_engine(database)
        try:
            factory = make_session_factory(engine)
            with factory() as session:  # a job cancelled while queued: the event goes to the outbox
                tenant_id = session.scalar(select(WebhookEndpoint.tenant_id))
                job = Job(tenant_id=tenant_id, spec={}, status=JobStatus.QUEUED)
                JobRepository(session).add(job)
                assert JobRepository(session).cancel_if_queued(job.id)
                session.commit()
            deliveries_url = f"{server.url}/v1/webhooks/{endpoint['id']}/deliveries"

            def delivery_where(done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
                (delivery,) = httpx.get(deliveries_url, headers=headers).json()["data"]
                return delivery if done(delivery) else None

            delivery = wait_until(
                lambda: delivery_where(lambda d: d["attempts"] >= 1), 120, message=server.log_tail
            )
            assert delivery["status"] == "pending" and delivery["last_status_code"] is None
            assert "Connect" in delivery["last_error"] or "refused" in delivery["last_error"]
            server.kill()  # SIGKILL: nothing gets a chance to clean up
            with Receiver([200], port=port) as receiver:
                server.start()
                assert receiver.wait_for(1, timeout=120), server.log_tail()
                headers_in, body = receiver.received[0]
                assert headers_in["webhook-id"] == delivery["webhook_id"]
                payload = Webhook(endpoint["secret"]).verify(body, headers_in)
                assert payload["type"] == "job.cancelled" and payload["data"]["job_id"] == str(job.id)
                wait_until(
                    lambda: delivery_where(lambda d: d["status"] == "succeeded"), 120, message=server.log_tail
                )
        finally:
            engine.dispose()
    finally:
        server.stop()


def test_payload_is_compact_json(client, tenant, sender) -> None:
    with Receiver([200]) as receiver:
        _register(client, tenant, receiver.url, ["job.cancelled"])
        job_id = _job(client, tenant.name)
        client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
        sender.run_once()
        (headers, body), *_ = receiver.received
        payload = json.loads(body)
        assert set(payload) == {"type", "timestamp", "data"}
        assert payload["timestamp"].endswith("Z") and headers["content-type"] == "application/json"
