"""Changing webhook endpoints in place against a real receiver: secret rotation with an overlap window (both
signatures verify during it, only the new one after it), PATCH of url/events/enabled keeping pending deliveries,
and a failed delivery resent through the API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.db import utcnow
from service.models import DeliveryStatus
from service.settings import Settings
from service.webhooks.delivery import DeliveryWorker

from .clock import FakeClock
from .conftest import error_of
from .webhook_helpers import add_events, count_deliveries, make_job, register
from .webhook_receiver import Receiver


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        webhook_allow_private=True,
        webhook_backoff_base=2.0,
        webhook_max_attempts=2,
        webhook_timeout=5.0,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sender(client, settings, clock) -> Iterator[DeliveryWorker]:
    worker = DeliveryWorker(client.app.state.session_factory, settings, clock=clock)
    yield worker
    worker.stop()


def test_rotation_signs_with_both_secrets_during_the_overlap_only(client, tenant, sender, clock) -> None:
    with Receiver([200]) as receiver:
        endpoint = register(client, tenant, receiver.url, ["job.succeeded"])
        old = endpoint["secret"]
        url = f"/v1/webhooks/{endpoint['id']}/rotate-secret"
        before = utcnow()
        response = client.post(url, headers=tenant.headers, json={"overlap_seconds": 3600})
        after = utcnow()
        assert response.status_code == 200, response.text
        rotated = response.json()
        new = rotated["secret"]
        assert new.startswith("whsec_") and new != old and rotated["id"] == endpoint["id"]
        expires = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert before + dt.timedelta(hours=1) <= expires <= after + dt.timedelta(hours=1)
        assert "secret" not in client.get(f"/v1/webhooks/{endpoint['id']}", headers=tenant.headers).json()

        add_events(client, tenant.name, "job.succeeded", [{"n": 1}])
        clock.reset()
        assert sender.run_once() == 1
        headers, body = receiver.received[-1]
        assert len(headers["webhook-signature"].split(" ")) == 2  # "v1,<new> v1,<old>"
        assert Webhook(new).verify(body, headers)["data"] == {"n": 1}
        assert Webhook(old).verify(body, headers)["data"] == {"n": 1}

        add_events(client, tenant.name, "job.succeeded", [{"n": 2}])
        clock.advance(3601)  # the overlap window is over
        assert sender.run_once() == 1
        headers, body = receiver.received[-1]
        assert len(headers["webhook-signature"].split(" ")) == 1
        assert Webhook(new).verify(body, headers)["data"] == {"n": 2}
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(body, headers)


def test_rotation_without_overlap_and_retried_rotations(client, tenant, sender, clock) -> None:
    with Receiver([200]) as receiver:
        endpoint = register(client, tenant, receiver.url, ["job.succeeded"])
        url = f"/v1/webhooks/{endpoint['id']}/rotate-secret"
        replay = {**tenant.headers, "Idempotency-Key": "rotate-1"}
        first = client.post(url, headers=replay, json={"overlap_seconds": 0})
        again = client.post(url, headers=replay, json={"overlap_seconds": 0})
        assert first.status_code == again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()  # not rotated twice
        assert first.json()["previous_secret_expires_at"] is None
        add_events(client, tenant.name, "job.succeeded", [{"n": 3}])
        clock.reset()
        assert sender.run_once() == 1
        headers, body = receiver.received[-1]
        assert Webhook(first.json()["secret"]).verify(body, headers)["data"] == {"n": 3}
        with pytest.raises(WebhookVerificationError):
            Webhook(endpoint["secret"]).verify(body, headers)
    too_long = client.post(url, headers=tenant.headers, json={"overlap_seconds": 8 * 86400})
    assert too_long.status_code == 422 and "overlap_seconds" in error_of(too_long)["message"]


def test_patch_changes_url_events_and_enabled_and_keeps_pending_deliveries(
    client, tenant, make_tenant, sender, clock
) -> None:
    with Receiver([200]) as first, Receiver([200]) as second:
        endpoint = register(client, tenant, first.url, ["job.succeeded"])
        url = f"/v1/webhooks/{endpoint['id']}"
        paused = client.patch(url, headers=tenant.headers, json={"enabled": False})
        assert paused.status_code == 200 and paused.json()["enabled"] is False
        assert "paused" in paused.json()["disabled_reason"]
        add_events(client, tenant.name, "job.succeeded", [{"n": 1}, {"n": 2}])
        clock.reset()
        assert sender.run_once() == 0  # paused: the deliveries wait
        moved = client.patch(url, headers=tenant.headers, json={"url": second.url, "events": ["job.failed"]})
        assert moved.status_code == 200
        assert moved.json()["url"] == second.url and moved.json()["events"] == ["job.failed"]
        assert count_deliveries(client, endpoint["id"], DeliveryStatus.PENDING) == 2
        resumed = client.patch(url, headers=tenant.headers, json={"enabled": True})
        assert resumed.json()["enabled"] is True and resumed.json()["disabled_reason"] == ""
        clock.reset()
        assert sender.run_once() == 2
        assert first.received == [] and len(second.received) == 2  # the pending ones went to the new URL
        for headers, body in second.received:  # same secret as before the PATCH
            Webhook(endpoint["secret"]).verify(body, headers)
        assert add_events(client, tenant.name, "job.succeeded", [{"n": 3}]) == 0  # no longer subscribed

    bad_url = client.patch(url, headers=tenant.headers, json={"url": "ftp://example.com/x"})
    assert bad_url.status_code == 422 and error_of(bad_url)["code"] == "invalid_webhook_url"
    no_events = client.patch(url, headers=tenant.headers, json={"events": []})
    assert no_events.status_code == 422 and error_of(no_events)["code"] == "validation_error"
    unknown = client.patch(url, headers=tenant.headers, json={"secret": "whsec_x"})
    assert unknown.status_code == 422 and "secret" in error_of(unknown)["message"]
    other = make_tenant("other")
    assert client.patch(url, headers=other.headers, json={"enabled": False}).status_code == 404
    assert client.get(url, headers=tenant.headers).json()["enabled"] is True


def test_a_failed_delivery_resent_through_the_api_arrives(client, tenant, make_tenant, sender, clock) -> None:
    with Receiver([500, 500, 200]) as receiver:
        endpoint = register(client, tenant, receiver.url, ["job.cancelled"])
        job_id = make_job(client, tenant.name)
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers).status_code == 202
        clock.reset()
        assert sender.run_once() == 1
        clock.advance(10)
        assert sender.run_once() == 1  # the second and last attempt (MPQ_WEBHOOK_MAX_ATTEMPTS=2)
        clock.advance(3600)
        assert sender.run_once() == 0
        deliveries = f"/v1/webhooks/{endpoint['id']}/deliveries"
        (delivery,) = client.get(deliveries, headers=tenant.headers).json()["data"]
        assert delivery["status"] == "failed" and delivery["attempts"] == 2 and delivery["last_status_code"] == 500

        retry = f"{deliveries}/{delivery['id']}/retry"
        assert client.post(retry, headers=make_tenant("other").headers).status_code == 404
        response = client.post(retry, headers=tenant.headers)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending" and response.json()["next_attempt_at"] is not None
        clock.reset()
        assert sender.run_once() == 1
        assert len(receiver.received) == 3
        ids = {headers["webhook-id"] for headers, _ in receiver.received}
        assert ids == {delivery["webhook_id"]}  # the same message: receivers deduplicate on its id
        payload = Webhook(endpoint["secret"]).verify(receiver.received[-1][1], receiver.received[-1][0])
        assert payload["data"]["job_id"] == str(job_id)
        (delivery,) = client.get(deliveries, headers=tenant.headers).json()["data"]
        assert delivery["status"] == "succeeded" and delivery["attempts"] == 3
        assert delivery["last_status_code"] == 200

    missing = client.post(f"{deliveries}/{endpoint['id']}/retry", headers=tenant.headers)
    assert missing.status_code == 404 and error_of(missing)["code"] == "delivery_not_found"
