"""Prometheus metrics: request counts and latency per route template, and jobs per status (read at scrape time).

Each app instance has its own :class:`CollectorRegistry`, so several apps (tests) can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.job.repository import JobRepository
from service.kit.db import session_scope
from service.models import JobStatus

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

    def add_jobs_collector(self, session_factory: Callable[[], sessionmaker[Session]]) -> None:
        self.registry.register(JobsCollector(session_factory))


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
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
