"""Webhook outages against a real receiver on 127.0.0.1, played on a fake clock (hours of backoff take
milliseconds, and nothing depends on how fast this machine is): a 2-minute outage during a burst of events
leaves the endpoint enabled and every event arrives exactly once afterwards; an endpoint failing for the
configured period (3 days by default) is disabled, shows on /metrics, and sends its backlog once re-enabled."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from quant.config import STAGES
from service.models import DeliveryStatus
from service.settings import Settings
from service.webhooks.delivery import DeliveryWorker

from .clock import FakeClock
from .server import free_port
from .webhook_helpers import add_events, count_deliveries, make_job, register
from .webhook_receiver import Receiver

ALL_EVENTS = ["job.cancelled", "job.failed", "job.stage_completed", "job.succeeded"]


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The default retry schedule (30 s doubling to 1 h, 16 attempts) and disable period (3 days)."""
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        webhook_allow_private=True,
        webhook_timeout=5.0,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sender(client, settings, clock) -> Iterator[DeliveryWorker]:
    worker = DeliveryWorker(client.app.state.session_factory, settings, clock=clock, rng=random.Random(20))
    yield worker
    worker.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_defaults_disable_after_three_days() -> None:
    assert Settings().webhook_disable_after_seconds == 3 * 24 * 3600


def test_two_minute_outage_keeps_the_endpoint_and_delivers_every_event_once(
    client, tenant, settings, sender, clock
) -> None:
    port = free_port()  # nothing listens there yet: the receiver is down, connections are refused
    endpoint = register(client, tenant, f"http://127.0.0.1:{port}/hook", ALL_EVENTS)
    job_id = make_job(client, tenant.name)
    # one job's events during the outage: a stage_completed per stage, then its terminal status
    stages = [{"job_id": str(job_id), "stage": stage, "status": "finished"} for stage in STAGES]
    assert add_events(client, tenant.name, "job.stage_completed", stages) == len(STAGES)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers).status_code == 202
    events = len(STAGES) + 1
    start = clock.reset()  # the events are due now
    attempts = 0
    while clock.now < start + dt.timedelta(seconds=120):  # 2 minutes of outage, a poll every simulated second
        attempts += sender.run_once()
        clock.advance(1)
    state = client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant.headers).json()
    # 8 events x 3 attempts each: the old rule (disable after 20 failed attempts) disabled the endpoint here
    assert attempts == 3 * events, attempts
    assert state["enabled"] is True and state["disabled_reason"] == ""
    assert state["failure_count"] == attempts
    assert dt.datetime.fromisoformat(state["failing_since"]) == start
    assert count_deliveries(client, endpoint["id"], DeliveryStatus.PENDING) == events

    with Receiver([200], port=port) as receiver:  # the receiver is back
        deadline = clock.now + dt.timedelta(hours=2)
        while count_deliveries(client, endpoint["id"], DeliveryStatus.PENDING) and clock.now < deadline:
            sender.run_once()
            clock.advance(5)
        for _ in range(12):  # hours later: nothing is sent twice
            assert sender.run_once() == 0
            clock.advance(600)
        received = list(receiver.received)
    ids = [headers["webhook-id"] for headers, _ in received]
    assert len(ids) == events and len(set(ids)) == events  # every event, each exactly once
    deliveries = client.get(
        f"/v1/webhooks/{endpoint['id']}/deliveries", headers=tenant.headers, params={"limit": 100}
    ).json()["data"]
    assert sorted(ids) == sorted(d["webhook_id"] for d in deliveries)
    assert {d["status"] for d in deliveries} == {"succeeded"}
    assert all(d["attempts"] == 4 for d in deliveries)  # 3 refused during the outage, then delivered
    payloads = [Webhook(endpoint["secret"]).verify(body, headers) for headers, body in received]
    assert sorted(p["data"].get("stage", "") for p in payloads) == sorted(["", *STAGES])
    state = client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant.headers).json()
    assert state["enabled"] is True and state["failure_count"] == 0 and state["failing_since"] is None


def test_an_endpoint_failing_for_the_period_is_disabled_shown_and_drained_when_enabled(
    client, tenant, settings, sender, clock
) -> None:
    period = dt.timedelta(seconds=settings.webhook_disable_after_seconds)
    with Receiver([503]) as receiver:
        endpoint = register(client, tenant, receiver.url, ["job.succeeded"])
        events = add_events(client, tenant.name, "job.succeeded", [{"n": 0}])
        start = clock.reset()
        disabled_at = None
        while clock.now < start + period + dt.timedelta(days=1):
            if clock.now > start and (clock.now - start) % dt.timedelta(hours=6) == dt.timedelta(0):
                events += add_events(client, tenant.name, "job.succeeded", [{"n": events}])  # every 6 hours
            sender.run_once()
            state = client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant.headers).json()
            if not state["enabled"]:
                disabled_at = clock.now
                break
            clock.advance(600)
        assert disabled_at is not None
        failing_for = disabled_at - start
        # disabled by the first failed attempt once 3 days have passed, not before (attempts are 10 min apart)
        assert period <= failing_for < period + dt.timedelta(minutes=10), failing_for
        assert state["failure_count"] > 16  # far more failures than one delivery's attempts
        assert "3d 0h" in state["disabled_reason"] and "enable" in state["disabled_reason"]
        before = len(receiver.received)
        clock.advance(3600)
        assert sender.run_once() == 0 and len(receiver.received) == before  # nothing goes to a disabled endpoint

        pending = count_deliveries(client, endpoint["id"], DeliveryStatus.PENDING)
        failed = count_deliveries(client, endpoint["id"], DeliveryStatus.FAILED)
        assert pending >= 1 and failed >= 1 and pending + failed == events
        samples = _samples(client.get("/metrics").text)
        labels = (("endpoint", endpoint["id"]), ("tenant", tenant.name))
        assert samples[("mpq_webhook_endpoint_disabled", labels)] == 1
        assert samples[("mpq_webhook_pending_deliveries", labels)] == pending
        assert samples[("mpq_webhook_oldest_pending_seconds", labels)] >= 0
        assert samples[("mpq_webhook_endpoints", (("state", "disabled"),))] >= 1

        receiver.statuses = [200]
        response = client.post(f"/v1/webhooks/{endpoint['id']}/enable", headers=tenant.headers)
        assert response.status_code == 200 and response.json()["enabled"] is True
        assert response.json()["failing_since"] is None and response.json()["failure_count"] == 0
        assert sender.run_once() == pending  # the backlog goes out at once
        assert count_deliveries(client, endpoint["id"], DeliveryStatus.PENDING) == 0
        samples = _samples(client.get("/metrics").text)
        assert ("mpq_webhook_endpoint_disabled", labels) not in samples
        assert ("mpq_webhook_pending_deliveries", labels) not in samples
