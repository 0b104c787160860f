"""The delivery loop: send due outbox rows, signed, and record each attempt (at least once).

It runs as a thread of the API process. Every attempt is claimed with a compare-and-set lease on the row, so
several API processes can run it side by side; a process killed mid-attempt leaves a lease that expires, and
the delivery is attempted again (with the same ``webhook-id``) by whoever runs next, including after a restart.

A failed attempt is retried with exponential backoff (:mod:`service.webhooks.backoff`) up to
``MPQ_WEBHOOK_MAX_ATTEMPTS``. An endpoint is disabled only once it has been failing for
``MPQ_WEBHOOK_DISABLE_AFTER_SECONDS`` (every attempt since ``failing_since`` failed), never for a number of
failed attempts: a burst of events during a short outage adds attempts, not failing time.

The worker's ``clock`` is its scheduling time: when deliveries are due, the backoff, the failing period and a
rotated-out secret's overlap window. The ``webhook-timestamp`` header is always the real time of the attempt
(receivers compare it with their own clock). Tests pass a clock to play hours of outage in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.errors import MPQError
from service.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from service.webhooks.backoff import retry_delay
from service.webhooks.repository import WebhookRepository
from service.webhooks.signing import signed_headers
from service.webhooks.urls import check_webhook_url

__all__ = ["DeliveryWorker", "message_id", "signing_secrets"]

logger = logging.getLogger("mpq.webhooks")

#: Deliveries claimed per poll.
BATCH = 20


def message_id(delivery_id: uuid.UUID) -> str:
    """The ``webhook-id`` of a delivery (the same on every retry)."""
    return f"msg_{delivery_id.hex}"


@dataclass(frozen=True)
class _Attempt:
    status_code: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker:
    """Sends due webhook deliveries; ``run_once()`` is one poll, ``start()`` runs polls in a thread."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        settings: Settings,
        *,
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.on_outcome = on_outcome
        self.clock = clock
        self.rng = rng
        self.http = httpx.Client(timeout=settings.webhook_timeout, follow_redirects=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- loop ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout + 5)
        self.http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:
                logger.warning("webhook delivery poll failed", exc_info=True)
                sent = 0
            if not sent:
                self._stop.wait(self.settings.webhook_poll_interval)

    def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were attempted."""
        now = self.clock()
        lease = dt.timedelta(seconds=self.settings.webhook_timeout + 30)
        with session_scope(self.session_factory) as session:
            repository = WebhookRepository(session)
            claimed = []
            for delivery_id in repository.due(now, BATCH):
                if repository.claim(delivery_id, now, now + lease):
                    claimed.append(delivery_id)
            session.commit()
        for delivery_id in claimed:
            if self._stop.is_set():
                break
            self._deliver(delivery_id)
        return len(claimed)

    # ---- one attempt ---------------------------------------------------------------------------------------
    def _deliver(self, delivery_id: uuid.UUID) -> None:
        with session_scope(self.session_factory) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
            if delivery is None or endpoint is None:
                return
            url, secrets = endpoint.url, signing_secrets(endpoint, self.clock())
            body = json.dumps(delivery.payload, separators=(",", ":"))
        attempt = self._post(url, secrets, message_id(delivery_id), body)
        self._record(delivery_id, attempt)

    def _post(self, url: str, secrets: list[str], msg_id: str, body: str) -> _Attempt:
        try:
            check_webhook_url(url, allow_private=self.settings.webhook_allow_private)
        except MPQError as exc:
            return _Attempt(None, exc.message)
        headers = signed_headers(secrets, msg_id, body, utcnow())
        headers["user-agent"] = "mpq-webhooks/1"
        try:
            response = self.http.post(url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            return _Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
        error = "" if response.is_success else f"HTTP {response.status_code}: {response.text[:200]}"
        return _Attempt(response.status_code, error)

    def _record(self, delivery_id: uuid.UUID, attempt: _Attempt) -> None:
        now = self.clock()
        with session_scope(self.session_factory) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None:
                return
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            delivery.attempts += 1
            delivery.last_status_code = attempt.status_code
            delivery.last_error = attempt.error
            delivery.locked_until = None
            if attempt.ok:
                outcome = "succeeded"
                delivery.status = DeliveryStatus.SUCCEEDED
                delivery.delivered_at = now
                if endpoint is not None:
                    endpoint.failure_count, endpoint.failing_since = 0, None
            else:
                outcome = self._schedule_retry(delivery, now)
                if endpoint is not None:
                    self._count_failure(endpoint, attempt, now)
            session.commit()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _schedule_retry(self, delivery: WebhookDelivery, now: dt.datetime) -> str:
        """After a failed attempt: the next one after the backoff, or ``failed`` after the last attempt."""
        settings = self.settings
        if delivery.attempts >= settings.webhook_max_attempts:
            delivery.status = DeliveryStatus.FAILED
            return "failed"
        delay = retry_delay(
            delivery.attempts,
            base=settings.webhook_backoff_base,
            maximum=settings.webhook_backoff_max,
            rng=self.rng,
        )
        delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
        return "retried"

    def _count_failure(self, endpoint: WebhookEndpoint, attempt: _Attempt, now: dt.datetime) -> None:
        """Extend the endpoint's failing period; disable it once the period reaches the configured length."""
        endpoint.failure_count += 1
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        failing = (now - endpoint.failing_since).total_seconds()
        if endpoint.enabled and failing >= self.settings.webhook_disable_after_seconds:
            endpoint.enabled = False
            endpoint.disabled_reason = (
                f"disabled after failing for {_duration(failing)} ({endpoint.failure_count} failed attempts "
                f"since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC; last: {attempt.error or attempt.status_code}); "
                f"re-enable it with POST /v1/webhooks/{endpoint.id}/enable or PATCH "
                '{"enabled": true}: its pending deliveries are sent again'
            )
            logger.warning("webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason)


def signing_secrets(endpoint: WebhookEndpoint, now: dt.datetime) -> list[str]:
    """The secrets a delivery is signed with at ``now``: the current one, and the previous one during the
    overlap window of a rotation."""
    secrets = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and now < expires:
        secrets.append(endpoint.previous_secret)
    return secrets


def _duration(seconds: float) -> str:
    """``3d 0h``, ``2h 5m`` or ``42s``: a failing period for people."""
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s" if seconds >= 60 else f"{seconds}s"
