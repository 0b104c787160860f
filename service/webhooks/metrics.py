"""Prometheus gauges of webhook health, read from the database when ``/metrics`` is scraped (every API process
reports the same numbers, whoever sends the deliveries):

- ``mpq_webhook_endpoints{state}``: endpoints per state (``enabled``, ``disabled``);
- ``mpq_webhook_endpoint_disabled{endpoint,tenant}``: 1 for each disabled endpoint (alert on it);
- ``mpq_webhook_endpoint_failing_seconds{endpoint,tenant}``: how long an endpoint has been failing (it is
  disabled at ``MPQ_WEBHOOK_DISABLE_AFTER_SECONDS``);
- ``mpq_webhook_pending_deliveries{endpoint,tenant}``: the backlog of each endpoint with one;
- ``mpq_webhook_oldest_pending_seconds{endpoint,tenant}``: age of its oldest pending delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.webhooks.repository import WebhookRepository

__all__ = ["WebhookCollector"]

_LABELS = ["endpoint", "tenant"]


class WebhookCollector(Collector):
    """Endpoint states, failing periods and delivery backlogs (see the module doc)."""

    def __init__(self, session_factory: Callable[[], sessionmaker[Session]]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with session_scope(self.session_factory()) as session:
                repository = WebhookRepository(session)
                endpoints = repository.endpoint_health()
                backlog = repository.pending_backlog()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            return
        now = utcnow()
        states = GaugeMetricFamily("mpq_webhook_endpoints", "Webhook endpoints per state", labels=["state"])
        states.add_metric(["enabled"], sum(1 for endpoint in endpoints if endpoint[2]))
        states.add_metric(["disabled"], sum(1 for endpoint in endpoints if not endpoint[2]))
        yield states
        disabled = GaugeMetricFamily(
            "mpq_webhook_endpoint_disabled", "1 for each disabled webhook endpoint", labels=_LABELS
        )
        failing = GaugeMetricFamily(
            "mpq_webhook_endpoint_failing_seconds",
            "Seconds since the first failed attempt after the endpoint's last success",
            labels=_LABELS,
        )
        pending = GaugeMetricFamily(
            "mpq_webhook_pending_deliveries", "Deliveries waiting to be sent, per endpoint", labels=_LABELS
        )
        oldest = GaugeMetricFamily(
            "mpq_webhook_oldest_pending_seconds", "Age of the oldest pending delivery, per endpoint", labels=_LABELS
        )
        for endpoint_id, tenant, enabled, failing_since in endpoints:
            labels = [str(endpoint_id), tenant]
            if not enabled:
                disabled.add_metric(labels, 1)
            if failing_since is not None:
                failing.add_metric(labels, max((now - failing_since).total_seconds(), 0.0))
            if endpoint_id in backlog:
                count, first = backlog[endpoint_id]
                pending.add_metric(labels, count)
                oldest.add_metric(labels, max((now - first).total_seconds(), 0.0))
        yield from (disabled, failing, pending, oldest)
