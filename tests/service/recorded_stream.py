"""A recorded job event stream, served over real HTTP so the CLI and the client can be tested on it.

``EVENTS`` is what ``GET /v1/jobs/{id}/events`` sends for a job driven through :data:`tests.service.live.REPORTS`
(``test_events`` checks that the live server sends exactly these). ``RecordedStream(EVENTS)`` serves one job:
``GET /v1/jobs/<JOB_ID>`` and its event stream, so the progress bar is rendered from a fixed sequence instead of a
job racing the test. Like the real API, the job reads as queued until its stream has been served and as the
stream left it afterwards (the client fetches the final job once the stream ends), whatever the timing.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from .local_http import LocalHTTPServer

__all__ = ["EVENTS", "JOB_ID", "RecordedStream"]

JOB_ID = "00000000-0000-4000-8000-000000000001"

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"status": "queued", "message": "queued"}),
    ("status", {"status": "running", "message": "running"}),
    ("stage", {"stage": "load", "state": "started"}),
    ("progress", {"stage": "load", "progress": 0.02, "eta_seconds": None, "message": "loading"}),
    ("stage", {"stage": "load", "state": "finished"}),
    ("stage", {"stage": "sensitivity", "state": "started"}),
    ("progress", {"stage": "sensitivity", "progress": 0.1, "eta_seconds": 90.0, "message": "sensitivity 1/4"}),
    (
        "progress",
        {"stage": "sensitivity", "progress": 0.1, "eta_seconds": 108.0, "message": "a report going backwards"},
    ),
    ("progress", {"stage": "sensitivity", "progress": 0.3, "eta_seconds": 46.7, "message": "sensitivity 4/4"}),
    ("status", {"status": "succeeded", "message": "done"}),
]

_QUEUED_JOB = {
    "id": JOB_ID,
    "name": "recorded",
    "status": "queued",
    "progress": 0.0,
    "stage": None,
    "message": "queued",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
}


def _final_job(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The job as ``events`` leave it: the last status, stage and message, the highest progress (1 if succeeded)."""
    job = dict(_QUEUED_JOB)
    for kind, data in events:
        if kind in ("status", "progress"):
            job["message"] = data.get("message", job["message"])
        if kind == "status":
            job["status"] = data["status"]
        if kind in ("stage", "progress"):
            job["stage"] = data["stage"]
        if kind == "progress":
            job["progress"] = max(job["progress"], data["progress"])
    if job["status"] == "succeeded":
        job["progress"] = 1.0
    return job


class RecordedStream(LocalHTTPServer):
    """``with RecordedStream(events) as stream: stream.url``: a stand-in API that serves one recorded job."""

    def __init__(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        body = "".join(
            f"id: {number}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
            for number, (kind, data) in enumerate(events, start=1)
        ).encode()
        queued = json.dumps(_QUEUED_JOB).encode()
        final = json.dumps(_final_job(events)).encode()
        served = threading.Event()  # set once the whole stream has been written

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server hook name
                if self.path == f"/v1/jobs/{JOB_ID}":
                    self._send(200, "application/json", final if served.is_set() else queued)
                elif self.path == f"/v1/jobs/{JOB_ID}/events":
                    self._send(200, "text/event-stream", body)
                    served.set()
                else:
                    self._send(404, "application/json", b'{"error": {"code": "job_not_found"}}')

            def _send(self, status: int, content_type: str, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *_args: object) -> None:
                pass

        self.serve(Handler)
        self.url = self.base_url
