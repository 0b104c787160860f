"""Prometheus metrics of the API.

- ``mpq_http_requests_total`` / ``mpq_http_request_duration_seconds``: per route template;
- ``mpq_jobs{status}``: jobs per status; ``mpq_job_outcomes_total{status,code}``: finished jobs by error code;
- ``mpq_stage_duration_seconds{stage}`` and ``mpq_queue_wait_seconds``: histograms of finished stages and of
  the time from submit to start;
- ``mpq_worker_heartbeat_age_seconds{worker}``: age of the oldest heartbeat of each worker's running jobs;
- ``mpq_tracking_failures_total``: jobs whose MLflow run could not be logged;
- ``mpq_webhook_deliveries_total{outcome}``: delivery attempts of this process (succeeded, retried, failed);
- ``mpq_webhook_endpoints{state}``, ``mpq_webhook_endpoint_disabled``, ``mpq_webhook_endpoint_failing_seconds``,
  ``mpq_webhook_pending_deliveries`` and ``mpq_webhook_oldest_pending_seconds``: endpoint health and backlog
  (:mod:`service.webhooks.metrics`);
- ``process_*`` / ``python_*``: the process collectors of prometheus_client (one API process only).

With ``mpq serve --workers N`` the HTTP and delivery series are summed over the API processes
(:mod:`service.serve`).

Job series are computed from the database at scrape time, so they cover every worker process. Each app
instance has its own :class:`CollectorRegistry`, so several apps (tests) can live in one process. With
``MPQ_METRICS_TOKEN`` set, ``GET /metrics`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import time
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import session_scope, utcnow
from service.errors import Unauthorized
from service.job.repository import JobRepository
from service.models import Job, JobStage, JobStatus

__all__ = ["JobsCollector", "Metrics", "PrometheusMiddleware", "router"]


class Metrics:
    """The metric objects of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mpq_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mpq_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

        self.webhook_deliveries = Counter(
            "mpq_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (succeeded, retried, failed)",
            ["outcome"],
            registry=self.registry,
        )
        #: What /metrics exposes: this registry, or with ``mpq serve --workers N`` (PROMETHEUS_MULTIPROC_DIR set)
        #: the counters and histograms of every API process, summed by prometheus_client.
        self.exposition = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)
        else:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def webhook_outcome(self, outcome: str) -> None:
        """Count one delivery attempt."""
        self.webhook_deliveries.labels(outcome).inc()

    def add_jobs_collector(self, session_factory: Callable[[], sessionmaker[Session]]) -> None:
        from service.webhooks.metrics import WebhookCollector

        self.exposition.register(JobsCollector(session_factory))
        self.exposition.register(JobTimingCollector(session_factory))
        self.exposition.register(WebhookCollector(session_factory))


class JobsCollector(Collector):
    """``mpq_jobs{status=...}``: number of jobs per status, counted in the database when scraped."""

    def __init__(self, session_factory: Callable[[], sessionmaker[Session]]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mpq_jobs", "Jobs per status", labels=["status"])
        try:
            with session_scope(self.session_factory()) as session:
                counts = JobRepository(session).count_by_status()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            counts = {}
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


#: Histogram buckets (seconds) of stage durations and queue waits.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


def _histogram(values: list[float]) -> tuple[list[tuple[str, float]], float]:
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in DURATION_BUCKETS]
    return [*buckets, ("+Inf", float(len(values)))], float(sum(values))


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


class JobTimingCollector(Collector):
    """Stage-duration and queue-wait histograms, outcomes by error code, heartbeat ages (from the database)."""

    def __init__(self, session_factory: Callable[[], sessionmaker[Session]]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily | GaugeMetricFamily]:
        try:
            with session_scope(self.session_factory()) as session:
                stages = session.execute(
                    select(JobStage.name, JobStage.started_at, JobStage.finished_at).where(
                        JobStage.finished_at.is_not(None), JobStage.reused_from.is_(None)
                    )
                ).all()
                jobs = session.execute(
                    select(
                        Job.status, Job.error, Job.created_at, Job.started_at, Job.worker_id, Job.heartbeat_at
                    )
                ).all()
                warnings = session.scalars(select(Job.warnings).where(Job.warnings.is_not(None))).all()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            return
        durations: dict[str, list[float]] = {}
        for name, started, finished in stages:
            seconds = _seconds(started, finished)
            if seconds is not None:
                durations.setdefault(name, []).append(seconds)
        family = HistogramMetricFamily(
            "mpq_stage_duration_seconds", "Duration of finished pipeline stages", labels=["stage"]
        )
        for name, values in sorted(durations.items()):
            buckets, total = _histogram(values)
            family.add_metric([name], buckets, total)
        yield family

        waits = [
            w for w in (_seconds(created, started) for _, _, created, started, _, _ in jobs) if w is not None
        ]
        family = HistogramMetricFamily("mpq_queue_wait_seconds", "Seconds from submit to the first start")
        buckets, total = _histogram(waits)
        family.add_metric([], buckets, total)
        yield family

        outcomes: dict[tuple[str, str], int] = {}
        ages: dict[str, float] = {}
        now = utcnow()
        for status, error, _, _, worker_id, heartbeat in jobs:
            status = str(getattr(status, "value", status))
            if status in ("succeeded", "failed", "cancelled"):
                code = str((error or {}).get("code", "")) if status == "failed" else ""
                outcomes[(status, code)] = outcomes.get((status, code), 0) + 1
            elif status == "running" and heartbeat is not None:
                age = _seconds(heartbeat, now) or 0.0
                ages[worker_id or ""] = max(ages.get(worker_id or "", 0.0), age)
        counter = CounterMetricFamily(
            "mpq_job_outcomes", "Finished jobs by status and error code", labels=["status", "code"]
        )
        for (status, code), count in sorted(outcomes.items()):
            counter.add_metric([status, code], count)
        yield counter
        gauge = GaugeMetricFamily(
            "mpq_worker_heartbeat_age_seconds",
            "Age of the oldest heartbeat among a worker's running jobs",
            labels=["worker"],
        )
        for worker, age in sorted(ages.items()):
            gauge.add_metric([worker], age)
        yield gauge
        failures = sum(
            1
            for items in warnings
            for item in (items or [])
            if isinstance(item, dict) and item.get("code") == "tracking_failed"
        )
        tracking = CounterMetricFamily(
            "mpq_tracking_failures", "Jobs whose MLflow tracking failed (job warnings)"
        )
        tracking.add_metric([], failures)
        yield tracking


class PrometheusMiddleware:
    """Counts and times every HTTP request, labelled by route template (``/v1/jobs/{job_id}``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status_code)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition (``Authorization: Bearer <MPQ_METRICS_TOKEN>`` when a token is set)."""
    token = request.app.state.settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized(
                "/metrics needs 'Authorization: Bearer <MPQ_METRICS_TOKEN>'", code="metrics_token"
            )
    return Response(generate_latest(request.app.state.metrics.exposition), media_type=CONTENT_TYPE_LATEST)
