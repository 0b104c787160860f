"""A small synchronous client of the mpq API (used by ``mpq submit/status/download`` and the tests)."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = ["APIError", "MPQClient"]

TERMINAL = ("succeeded", "failed", "cancelled")


class APIError(Exception):
    """An error response of the API (``{"error": {"code", "message", "details"}}``)."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message, self.details = status_code, code, message, details


class MPQClient:
    """Talks to one server with one API key."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise APIError(response.status_code, "http_error", response.text[:500]) from None
        raise APIError(
            response.status_code, error.get("code", ""), error.get("message", ""), error.get("details")
        )

    def upload(self, path: str | Path, kind: str | None = None) -> dict[str, Any]:
        """Upload a safetensors file; returns the artifact."""
        path = Path(path)
        with path.open("rb") as handle:
            data = {"kind": kind} if kind else None
            response = self.http.post("/v1/artifacts", files={"file": (path.name, handle)}, data=data)
        return self._check(response).json()

    def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post("/v1/jobs", json=spec)).json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}")).json()

    def list_jobs(self, status: str | None = None, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._check(self.http.get("/v1/jobs", params=params)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.post(f"/v1/jobs/{job_id}/cancel")).json()

    def report(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/report")).json()

    def reallocate(self, job_id: str, budgets: dict[str, float], **extra: Any) -> dict[str, Any]:
        return self._check(
            self.http.post(f"/v1/jobs/{job_id}/reallocate", json={"budgets": budgets, **extra})
        ).json()

    def wait(
        self, job_id: str, *, timeout: float = 3600.0, interval: float = 0.5, on_update: Any = None
    ) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; returns the final job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g}s")
            time.sleep(interval)

    def download(self, job_id: str, destination: str | Path, *, extract: bool = True) -> Path:
        """Download the job's bundle; extract it into ``destination`` (a folder) or save the zip there."""
        response = self._check(self.http.get(f"/v1/jobs/{job_id}/artifact"))
        destination = Path(destination)
        if not extract:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(response.content)
            return destination
        destination.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            for member in archive.namelist():
                target = (destination / member).resolve()
                if not target.is_relative_to(destination.resolve()):
                    raise APIError(
                        200, "unsafe_archive", f"refusing to extract {member!r} outside {destination}"
                    )
            archive.extractall(destination)
        return destination
