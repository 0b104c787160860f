"""The asynchronous client (httpx.AsyncClient): the same methods as :class:`~service.client.MPQClient`."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
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
    Job,
    JobEvent,
    JobPage,
    JobReport,
    ParetoCurve,
    WebhookCreated,
)
from service.client.sse import parse_async

__all__ = ["AsyncMPQClient"]


class AsyncMPQClient:
    """Async twin of :class:`~service.client.MPQClient` (``async with AsyncMPQClient(url, key) as client``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def upload(
        self, path: str | Path, kind: str | None = None, *, idempotency_key: str | None = None
    ) -> Artifact:
        path = Path(path)
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        data = {"kind": kind} if kind else None
        files = {"file": (path.name, path.read_bytes())}
        return parse(await self.http.post("/v1/artifacts", files=files, data=data, headers=headers), Artifact)

    async def list_artifacts(
        self, *, limit: int = 20, after: str | None = None, **filters: Any
    ) -> ArtifactPage:
        params = job_filters(limit=limit, after=after, **filters)
        return parse(await self.http.get("/v1/artifacts", params=params), ArtifactPage)

    async def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return parse(await self.http.post("/v1/jobs", json=spec, headers=headers), Job)

    create_job = submit

    async def get_job(self, job_id: str) -> Job:
        return parse(await self.http.get(f"/v1/jobs/{job_id}"), Job)

    async def list_jobs(
        self, status: str | None = None, *, limit: int = 20, after: str | None = None, **filters: Any
    ) -> JobPage:
        params = job_filters(status=status, limit=limit, after=after, **filters)
        return parse(await self.http.get("/v1/jobs", params=params), JobPage)

    async def iter_jobs(
        self, status: str | None = None, *, page_size: int = 100, **filters: Any
    ) -> AsyncIterator[Job]:
        """Every job matching the filters, newest first, following the cursors."""
        after = None
        while True:
            page = await self.list_jobs(status, limit=page_size, after=after, **filters)
            for job in page.data:
                yield job
            if not page.has_more:
                return
            after = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        return parse(await self.http.post(f"/v1/jobs/{job_id}/cancel"), Job)

    async def report(self, job_id: str) -> JobReport:
        return parse(await self.http.get(f"/v1/jobs/{job_id}/report"), JobReport)

    async def reallocate(
        self, job_id: str, budgets: dict[str, float], *, idempotency_key: str | None = None, **extra: Any
    ) -> Job:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        body = {"budgets": budgets, **extra}
        return parse(await self.http.post(f"/v1/jobs/{job_id}/reallocate", json=body, headers=headers), Job)

    async def pareto(
        self,
        job_id: str,
        budget: str,
        points: int = 32,
        values: list[float] | None = None,
        *,
        time_limit: float | None = None,
    ) -> ParetoCurve:
        """The Pareto curve of ``budget`` solved from the job's stored tables (see :meth:`MPQClient.pareto`)."""
        body = pareto_body(budget, points, values, time_limit)
        return parse(await self.http.post(f"/v1/jobs/{job_id}/pareto", json=body), ParetoCurve)

    async def events(
        self, job_id: str, *, last_event_id: int | None = None, retries: int = 5
    ) -> AsyncIterator[JobEvent]:
        """The job's Server-Sent Events until its terminal status (reconnecting with ``Last-Event-ID``)."""
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for_error(response)
                    async for event in parse_async(response.aiter_lines()):
                        failures = 0
                        last = event.id
                        yield event
                        if event.event == "status" and event.data.get("status") in TERMINAL:
                            return
                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.ConnectError):
                failures += 1
                if failures > retries:
                    raise
                await asyncio.sleep(min(0.5 * failures, 5.0))

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Follow the event stream until the job is finished; returns the final job."""
        deadline = time.monotonic() + timeout
        job = await self.get_job(job_id)
        if not job.done:
            try:
                async for event in self.events(job_id):
                    job = apply_event(job, event)
                    if on_update is not None:
                        on_update(job)
                    if job.done:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g}s")
            except httpx.HTTPError:
                pass
        while True:
            job = await self.get_job(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout:g}s")
            await asyncio.sleep(interval)

    async def download(self, job_id: str, destination: str | Path, *, extract: bool = True) -> Path:
        """Download the bundle, verify its sha256 (header, else the job's ``bundle_sha256``), extract or save it;
        nothing is left behind on a mismatch (see :meth:`MPQClient.download`)."""
        destination = Path(destination)
        part = temporary_path(destination, "part")
        try:
            digest = hashlib.sha256()
            async with self.http.stream("GET", f"/v1/jobs/{job_id}/artifact") as response:
                if not response.is_success:
                    await response.aread()
                    raise_for_error(response)
                expected = response.headers.get(SHA256_HEADER, "")
                with part.open("wb") as handle:
                    async for chunk in response.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        handle.write(chunk)
            source = "the X-Content-SHA256 header"
            if not expected:
                expected, source = (await self.get_job(job_id)).bundle_sha256 or "", "the job's bundle_sha256"
            return await asyncio.to_thread(
                finish_download, part, destination, expected, digest.hexdigest(), extract=extract, source=source
            )
        finally:
            part.unlink(missing_ok=True)

    async def create_webhook(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        body: dict[str, Any] = {"url": url, **({"events": events} if events else {})}
        return parse(await self.http.post("/v1/webhooks", json=body), WebhookCreated)
