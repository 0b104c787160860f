"""The delivery loop: send due outbox rows, signed, and record each attempt (at least once).

It runs as a thread of the API process. Every attempt is claimed with a compare-and-set lease on the row, so
several API processes can run it side by side; a process killed mid-attempt leaves a lease that expires, and
the delivery is attempted again (with the same ``webhook-id``) by whoever runs next, including after a restart.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.kit.db import session_scope, utcnow
from service.kit.errors import MPQError
from service.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from service.settings import Settings
from service.webhooks.backoff import retry_delay
from service.webhooks.repository import WebhookRepository
from service.webhooks.signing import signed_headers
from service.webhooks.urls import check_webhook_url

__all__ = ["DeliveryWorker", "message_id"]

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
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.on_outcome = on_outcome
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
        now = utcnow()
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
            url, secret = endpoint.url, endpoint.secret
            body = json.dumps(delivery.payload, separators=(",", ":"))
        attempt = self._post(url, secret, message_id(delivery_id), body)
        self._record(delivery_id, attempt)

    def _post(self, url: str, secret: str, msg_id: str, body: str) -> _Attempt:
        try:
            check_webhook_url(url, allow_private=self.settings.webhook_allow_private)
        except MPQError as exc:
            return _Attempt(None, exc.message)
        headers = signed_headers(secret, msg_id, body, utcnow())
        headers["user-agent"] = "mpq-webhooks/1"
        try:
            response = self.http.post(url, content=body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            return _Attempt(None, f"{type(exc).__name__}: {exc}"[:500])
        error = "" if response.is_success else f"HTTP {response.status_code}: {response.text[:200]}"
        return _Attempt(response.status_code, error)

    def _record(self, delivery_id: uuid.UUID, attempt: _Attempt) -> None:
        settings = self.settings
        now = utcnow()
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
                    endpoint.failure_count = 0
            else:
                if delivery.attempts >= settings.webhook_max_attempts:
                    outcome = "failed"
                    delivery.status = DeliveryStatus.FAILED
                else:
                    outcome = "retried"
                    delay = retry_delay(
                        delivery.attempts,
                        base=settings.webhook_backoff_base,
                        maximum=settings.webhook_backoff_max,
                    )
                    delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
                if endpoint is not None:
                    endpoint.failure_count += 1
                    if endpoint.enabled and endpoint.failure_count >= settings.webhook_disable_after:
                        endpoint.enabled = False
                        endpoint.disabled_reason = (
                            f"disabled after {endpoint.failure_count} consecutive failed deliveries "
                            f"(last: {attempt.error or attempt.status_code}); re-enable it with "
                            f"POST /v1/webhooks/{endpoint.id}/enable"
                        )
                        logger.warning(
                            "webhook endpoint %s disabled: %s", endpoint.id, endpoint.disabled_reason
                        )
            session.commit()
        if self.on_outcome is not None:
            self.on_outcome(outcome)
