"""The synchronous client (httpx)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx

from service.client._core import (
    apply_event,
    job_filters,
    new_idempotency_key,
    pareto_body,
    parse,
    raise_for_error,
)
from service.client.download import SHA256_HEADER, finish_download, temporary_path
from service.client.models import (
    TERMINAL,
    Artifact,
    ArtifactPage,
    Delivery,
    Job,
    JobEvent,
    JobPage,
    JobReport,
    LogLine,
    ParetoCurve,
    Webhook,
    WebhookCreated,
)
from service.client.sse import parse_lines

__all__ = ["MPQClient"]


class MPQClient:
    """Talks to one mpq server with one API key. Use as a context manager (or call :meth:`close`).

    Submits (``submit``, ``reallocate``, ``upload``) send an ``Idempotency-Key``: a fresh one unless given, so a
    caller retrying after a network error should pass its own key to get the first response back.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- artifacts -----------------------------------------------------------------------------------------
    def upload(
        self, path: str | Path, kind: str | None = None, *, idempotency_key: str | None = None
    ) -> Artifact:
        """Upload a safetensors file (``kind``: weights or images; inferred when omitted)."""
        path = Path(path)
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        with path.open("rb") as handle:
            data = {"kind": kind} if kind else None
            response = self.http.post(
                "/v1/artifacts", files={"file": (path.name, handle)}, data=data, headers=headers
            )
        return parse(response, Artifact)

    def get_artifact(self, artifact_id: str) -> Artifact:
        return parse(self.http.get(f"/v1/artifacts/{artifact_id}"), Artifact)

    def list_artifacts(self, *, limit: int = 20, after: str | None = None, **filters: Any) -> ArtifactPage:
        """One page of artifacts, newest first (filters: ``kind``, ``created_after``, ``created_before``)."""
        params = job_filters(limit=limit, after=after, **filters)
        return parse(self.http.get("/v1/artifacts", params=params), ArtifactPage)

    def iter_artifacts(self, *, page_size: int = 100, **filters: Any) -> Iterator[Artifact]:
        """Every artifact matching ``filters``, newest first, following the cursors."""
        after = None
        while True:
            page = self.list_artifacts(limit=page_size, after=after, **filters)
            yield from page.data
            if not page.has_more:
                return
            after = page.next_cursor

    # ---- jobs ----------------------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job (``POST /v1/jobs`` body); returns it queued."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return parse(self.http.post("/v1/jobs", json=spec, headers=headers), Job)

    create_job = submit

    def get_job(self, job_id: str) -> Job:
        return parse(self.http.get(f"/v1/jobs/{job_id}"), Job)

    def list_jobs(
        self,
        status: str | None = None,
        *,
        limit: int = 20,
        after: str | None = None,
        **filters: Any,
    ) -> JobPage:
        """One page of jobs, newest first (filters: ``created_after``, ``created_before``, ``parent_id``, ``name``)."""
        params = job_filters(status=status, limit=limit, after=after, **filters)
        return parse(self.http.get("/v1/jobs", params=params), JobPage)

    def iter_jobs(self, status: str | None = None, *, page_size: int = 100, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters, newest first, following the cursors (stable under new submits)."""
        after = None
        while True:
            page = self.list_jobs(status, limit=page_size, after=after, **filters)
            yield from page.data
            if not page.has_more:
                return
            after = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        return parse(self.http.post(f"/v1/jobs/{job_id}/cancel"), Job)

    def report(self, job_id: str) -> JobReport:
        return parse(self.http.get(f"/v1/jobs/{job_id}/report"), JobReport)

    def reallocate(
        self, job_id: str, budgets: dict[str, float], *, idempotency_key: str | None = None, **extra: Any
    ) -> Job:
        """A new job with new budgets that reuses ``job_id``'s sensitivities (and, for target onnxruntime-cpu, its
        measured latency table): nothing is measured again."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        body = {"budgets": budgets, **extra}
        return parse(self.http.post(f"/v1/jobs/{job_id}/reallocate", json=body, headers=headers), Job)

    def pareto(
        self,
        job_id: str,
        budget: str,
        points: int = 32,
        values: list[float] | None = None,
        *,
        time_limit: float | None = None,
    ) -> ParetoCurve:
        """The Pareto curve of ``budget`` (a budget name: wbits, latency_ms, ...) solved from the finished job's
        stored tables: ``points`` evenly spread values, or exactly ``values`` (in the budget's unit)."""
        body = pareto_body(budget, points, values, time_limit)
        return parse(self.http.post(f"/v1/jobs/{job_id}/pareto", json=body), ParetoCurve)

    def logs(self, job_id: str) -> list[LogLine]:
        """The worker's stored log lines of the job."""
        lines: list[LogLine] = []
        after = 0
        while True:
            response = self.http.get(f"/v1/jobs/{job_id}/logs", params={"after": after, "limit": 5000})
            raise_for_error(response)
            body = response.json()
            lines += [LogLine.model_validate(line) for line in body["data"]]
            if body.get("next_after") is None:
                return lines
            after = body["next_after"]

    # ---- live events ---------------------------------------------------------------------------------------
    def events(
        self, job_id: str, *, last_event_id: int | None = None, retries: int = 5
    ) -> Iterator[JobEvent]:
        """The job's Server-Sent Events until its terminal status; reconnects with ``Last-Event-ID`` when the
        connection drops (at most ``retries`` times in a row)."""
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
                    if not response.is_success:
                        response.read()
                        raise_for_error(response)
                    for event in parse_lines(response.iter_lines()):
                        failures = 0
                        last = event.id
                        yield event
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return
                return  # the server closed the stream: the job is finished
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ConnectError):
                failures += 1
                if failures > retries:
                    raise
                time.sleep(min(0.5 * failures, 5.0))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        on_update: Callable[[Job], None] | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> Job:
        """Follow the job's event stream until it is succeeded, failed or cancelled; returns the final job.

        ``on_update(job)`` sees the job after every event (progress never decreases); ``on_event`` each raw
        event. Falls back to polling every ``interval`` seconds if the stream is unavailable.
        """
        deadline = time.monotonic() + timeout
        job = self.get_job(job_id)
        if on_update is not None:
            on_update(job)
        if job.done:
            return job
        try:
            for event in self.events(job_id):
                job = apply_event(job, event)
                if on_event is not None:
                    on_event(event)
                if on_update is not None:
                    on_update(job)
                if job.done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g}s")
        except httpx.HTTPError:
            pass  # fall back to polling below
        while True:
            job = self.get_job(job_id)
            if job.done:
                if on_update is not None:
                    on_update(job)
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g}s")
            if on_update is not None:
                on_update(job)
            time.sleep(interval)

    # ---- bundle --------------------------------------------------------------------------------------------
    def download(self, job_id: str, destination: str | Path, *, extract: bool = True) -> Path:
        """Download the job's bundle and verify its sha256 (the ``X-Content-SHA256`` header, or the job's
        ``bundle_sha256`` when the header is missing), then extract it into ``destination`` (a folder) or save the
        zip there. :class:`ChecksumMismatch` on a corrupt transfer, and nothing is left behind (see
        :mod:`service.client.download`)."""
        destination = Path(destination)
        part = temporary_path(destination, "part")
        try:
            digest = hashlib.sha256()
            with self.http.stream("GET", f"/v1/jobs/{job_id}/artifact") as response:
                if not response.is_success:
                    response.read()
                    raise_for_error(response)
                expected = response.headers.get(SHA256_HEADER, "")
                with part.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        handle.write(chunk)
            source = "the X-Content-SHA256 header"
            if not expected:
                expected, source = self.get_job(job_id).bundle_sha256 or "", "the job's bundle_sha256"
            return finish_download(part, destination, expected, digest.hexdigest(), extract=extract, source=source)
        finally:
            part.unlink(missing_ok=True)

    # ---- webhooks ------------------------------------------------------------------------------------------
    def create_webhook(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        """Register a webhook endpoint; the result's ``secret`` is shown only this once."""
        body: dict[str, Any] = {"url": url, **({"events": events} if events else {})}
        return parse(self.http.post("/v1/webhooks", json=body), WebhookCreated)

    def list_webhooks(self) -> list[Webhook]:
        response = self.http.get("/v1/webhooks")
        raise_for_error(response)
        return [Webhook.model_validate(row) for row in response.json()["data"]]

    def enable_webhook(self, webhook_id: str) -> Webhook:
        return parse(self.http.post(f"/v1/webhooks/{webhook_id}/enable"), Webhook)

    def update_webhook(
        self,
        webhook_id: str,
        *,
        url: str | None = None,
        events: list[str] | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        """Change an endpoint in place (``PATCH``): its id, secret and pending deliveries stay."""
        body = {k: v for k, v in {"url": url, "events": events, "enabled": enabled}.items() if v is not None}
        return parse(self.http.patch(f"/v1/webhooks/{webhook_id}", json=body), Webhook)

    def rotate_webhook_secret(
        self, webhook_id: str, *, overlap_seconds: int = 86400, idempotency_key: str | None = None
    ) -> WebhookCreated:
        """A new signing secret; the old one keeps signing next to it for ``overlap_seconds``."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = self.http.post(
            f"/v1/webhooks/{webhook_id}/rotate-secret", json={"overlap_seconds": overlap_seconds}, headers=headers
        )
        return parse(response, WebhookCreated)

    def retry_delivery(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a delivery again (same ``webhook-id``)."""
        return parse(self.http.post(f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"), Delivery)

    def delete_webhook(self, webhook_id: str) -> None:
        raise_for_error(self.http.delete(f"/v1/webhooks/{webhook_id}"))

    def deliveries(self, webhook_id: str, *, limit: int = 20) -> list[Delivery]:
        response = self.http.get(f"/v1/webhooks/{webhook_id}/deliveries", params={"limit": limit})
        raise_for_error(response)
        return [Delivery.model_validate(row) for row in response.json()["data"]]

