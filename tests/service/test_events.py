"""GET /v1/jobs/{id}/events (SSE over real HTTP, read with httpx until the terminal event; resume with
Last-Event-ID), GET /v1/jobs/{id}/logs, monotone progress with ETA, and ``mpq submit --wait`` /
``mpq status --follow``.

Nothing here depends on timing: jobs are driven through the worker's code on a recorded timeline
(:func:`tests.service.live.drive_job`), so the ETAs are exact numbers, and the progress bar is checked on the
recorded event stream of such a job (:mod:`tests.service.recorded_stream`).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, func, select

from service.auth.service import create_key
from service.cli import main
from service.client import MPQClient
from service.commands.jobs import eta_text
from service.events.logs import JobLogCapture
from service.events.progress import ProgressTracker
from service.events.stream import fetch_events
from service.models import Job, JobEvent, JobStatus, Tenant
from service.settings import Settings
from tests.waiting import wait_until

from .conftest import error_of
from .live import REPORTED, REPORTS, LiveServer, drive_job
from .recorded_stream import EVENTS, JOB_ID, RecordedStream

SPEC = {"model": {"name": "builtin:vit-digits"}, "method": {"quantizer": "minmax", "wbits": 8, "abits": 8}}


@pytest.fixture(scope="module")
def settings(backend_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=backend_url,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        embedded_worker=False,
        webhook_worker=False,
        job_log_max_lines=3,
    )


@pytest.fixture(scope="module")
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def key(live: LiveServer) -> str:
    with live.app.state.session_factory() as session:
        return create_key(session, f"events-{uuid.uuid4().hex[:8]}").key


def _sse(url: str, key: str, job_id: str, last_event_id: str | None = None) -> list[tuple[str, str, dict]]:
    """Read the raw stream with httpx until the server closes it: ``(id, event, data)``."""
    import json

    headers = {
        "Authorization": f"Bearer {key}",
        **({"Last-Event-ID": last_event_id} if last_event_id else {}),
    }
    events, current = [], {}
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(
                        (current.get("id", ""), current.get("event", ""), json.loads(current["data"]))
                    )
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value
    return events


def test_stream_follows_a_job_to_its_terminal_event_and_resumes(live, key, tmp_path) -> None:
    with MPQClient(live.url, key) as client:
        job = client.submit(SPEC)
    received: list[tuple[str, str, dict]] = []
    reader = threading.Thread(target=lambda: received.extend(_sse(live.url, key, job.id)))
    reader.start()
    driver = threading.Thread(target=drive_job, args=(live.app, uuid.UUID(job.id), tmp_path / "work"))
    driver.start()
    driver.join(timeout=60)
    reader.join(timeout=60)
    assert not reader.is_alive(), "the stream did not close at the terminal state"
    kinds = [(event, data.get("status") or data.get("stage")) for _, event, data in received]
    assert kinds[0] == ("status", "queued") and kinds[1] == ("status", "running")
    assert kinds[-1] == ("status", "succeeded")
    assert ("stage", "load") in kinds and ("stage", "sensitivity") in kinds
    ids = [int(event_id) for event_id, _, _ in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [data for _, event, data in received if event == "progress"]
    # the 0.08 report did not go back; ETAs from the rate measured on the recorded timeline
    assert [(p["progress"], p["eta_seconds"]) for p in progress] == REPORTED
    # the recorded stream the CLI tests render is what the server sends
    assert [(event, _without(data, "time", "seconds")) for _, event, data in received] == EVENTS
    finished = [data for _, event, data in received if event == "stage" and data["state"] == "finished"]
    assert [data["stage"] for data in finished] == ["load"]
    # resume after the third event: exactly the rest, ending at the terminal event
    resumed = _sse(live.url, key, job.id, last_event_id=str(ids[2]))
    assert resumed == received[3:]
    # resuming after the terminal event: 204, nothing sent twice (EventSource stops reconnecting on 204)
    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": str(ids[-1])}
    after_end = httpx.get(f"{live.url}/v1/jobs/{job.id}/events", headers=headers, timeout=30)
    assert after_end.status_code == 204 and after_end.content == b""
    with MPQClient(live.url, key) as client:
        assert list(client.events(job.id, last_event_id=ids[-1])) == []
    # an id this stream never sent (another job's, or larger than any) is refused, never echoed
    with MPQClient(live.url, key) as client:
        queued = client.submit(SPEC).id  # its "queued" status event is an id of another stream
    with live.app.state.session_factory() as session:
        other = str(session.scalar(select(JobEvent.id).where(JobEvent.job_id == uuid.UUID(queued))))
    for unknown in (str(ids[-1] + 10**9), other, "-3", "abc"):
        headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": unknown}
        response = httpx.get(f"{live.url}/v1/jobs/{job.id}/events", headers=headers, timeout=30)
        assert response.status_code == 422, (unknown, response.text)
        assert error_of(response)["code"] == "unknown_last_event_id"
        assert unknown not in {event_id for event_id, _, _ in received}


def test_a_job_finishing_between_the_two_reads_of_a_poll_is_seen_with_its_terminal_event(live, key) -> None:
    """A poll reads the job and its events in two statements; the job finishes (its terminal status and event in
    one commit) right between them. The poll never sees a terminal job without its terminal event (it once did
    on PostgreSQL, and the stream then ended on an id-less fallback event instead of the real one)."""
    from service.job.repository import JobRepository
    from service.worker.job_run import JobRun

    factory = live.app.state.session_factory
    if factory.kw["bind"].dialect.name == "sqlite":
        pytest.skip("SQLite: the reading transaction blocks the writer's commit, so it cannot happen in between")
    with MPQClient(live.url, key) as client:
        job_id = uuid.UUID(client.submit(SPEC).id)
    with factory() as session:
        assert JobRepository(session).claim(job_id, worker_id="w", lease_id="lease")
        session.commit()
    run = JobRun(job_id, "lease", factory, live.app.state.settings, threading.Event())
    statements: list[str] = []

    def finish_after_the_first_read(conn, cursor, statement, *_args) -> None:
        statements.append(statement)
        if len(statements) == 2:  # the poll's second statement is about to run: the job finishes now
            assert run.finish(JobStatus.SUCCEEDED, message="done", progress=1.0)

    engine = factory.kw["bind"]
    with factory() as session:  # the events of the claim, so that the poll below starts after them
        after = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
    event.listen(engine, "before_cursor_execute", finish_after_the_first_read)
    try:
        batch = fetch_events(factory, job_id, after)
    finally:
        event.remove(engine, "before_cursor_execute", finish_after_the_first_read)
    assert len(statements) >= 2, statements
    terminal = [data for _, kind, data, _ in batch.events if kind == "status" and data["status"] == "succeeded"]
    assert batch.status != "succeeded" or terminal, (batch.status, batch.events)


def test_status_and_message_agree_from_the_claim_on(live, key) -> None:
    from service.job.repository import JobRepository

    with MPQClient(live.url, key) as client:
        job = client.submit(SPEC)
        assert (job.status, job.message) == ("queued", "queued")
        with live.app.state.session_factory() as session:
            assert JobRepository(session).claim(uuid.UUID(job.id), worker_id="w", lease_id="l")
            session.commit()
        job = client.get_job(job.id)
        assert (job.status, job.message) == ("running", "running")


def test_stream_of_unknown_or_foreign_job_is_404(live, key) -> None:
    response = httpx.get(
        f"{live.url}/v1/jobs/{uuid.uuid4()}/events", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


def test_logs_are_stored_bounded_and_redacted(live, key) -> None:
    with MPQClient(live.url, key) as client:
        job = client.submit(SPEC)
    capture = JobLogCapture(
        uuid.UUID(job.id),
        live.app.state.session_factory,
        max_lines=3,
        redact=lambda text: text.replace("/srv/secret", "<artifact>"),
    )
    capture.start()
    log = logging.getLogger("quant.test_events")
    try:
        log.info("reading /srv/secret/weights.safetensors")
        log.warning("low agreement %.2f", 0.5)
        logging.getLogger("unrelated").warning("not captured")
        log.info("third line")
        log.info("fourth line is dropped")
        threading.Thread(target=lambda: log.info("another thread: not this job")).start()
    finally:
        capture.stop()
    with MPQClient(live.url, key) as client:
        lines = client.logs(job.id)
    assert [(line.level, line.message) for line in lines] == [
        ("INFO", "reading <artifact>/weights.safetensors"),
        ("WARNING", "low agreement 0.50"),
        ("INFO", "third line"),
        ("WARNING", "(log truncated)"),
    ]
    assert all(line.logger.startswith("quant") for line in lines)


def test_progress_tracker_is_monotone_with_measured_eta() -> None:
    tracker = ProgressTracker(start=0.2, clock=100.0)
    assert tracker.update(0.1, now=100.5) == (0.2, None)  # resumed at 0.2: never below it
    assert tracker.update(0.3, now=101.0) == (0.3, None)  # < 2 s elapsed: no ETA yet
    value, eta = tracker.update(0.4, now=110.0)  # 0.2 gained in 10 s -> 0.6 left takes 30 s
    assert value == 0.4 and eta == pytest.approx(30.0)
    assert tracker.update(0.35, now=111.0)[0] == 0.4
    assert tracker.update(1.0, now=120.0) == (1.0, 0.0)


def test_recorded_reports_give_the_recorded_etas() -> None:
    tracker = ProgressTracker(start=0.0, clock=0.0)
    assert [tracker.update(fraction, now=seconds) for seconds, _, fraction, _ in REPORTS] == REPORTED


def test_eta_text_of_the_recorded_etas() -> None:
    assert [eta_text(eta) for _, eta in REPORTED] == ["ETA --", "ETA 1m30s", "ETA 1m48s", "ETA 0m47s"]
    assert [eta_text(s) for s in (0.0, 59.4, 59.5, 3599.4, 3599.5, 3725.0)] == [
        "ETA 0m00s",
        "ETA 0m59s",
        "ETA 1m00s",  # rounded to whole seconds (banker's rounding: 59.5 -> 60, 58.5 -> 58)
        "ETA 59m59s",
        "ETA 1h00m",
        "ETA 1h02m",
    ]


def _bar(percent: float, status: str, stage: str, eta: str) -> str:
    filled = round(30 * percent / 100)
    return f"[{'#' * filled}{'.' * (30 - filled)}] {percent:5.1f}%  {status:<9} stage={stage:<11} {eta}"


#: What ``mpq status --follow`` draws on a terminal for :data:`EVENTS`: the job as first fetched, then one frame
#: per event (its ETA is the one of the last progress event; a status event clears it), then the final job.
TERMINAL_FRAMES = [
    _bar(0.0, "queued", "-", "ETA --") + "  queued",  # the job as fetched
    _bar(0.0, "queued", "-", "ETA --") + "  queued",
    _bar(0.0, "running", "-", "ETA --") + "  running",
    _bar(0.0, "running", "load", "ETA --") + "  running",
    _bar(2.0, "running", "load", "ETA --") + "  loading",  # 1 s in: no ETA yet
    _bar(2.0, "running", "load", "ETA --") + "  loading",
    _bar(2.0, "running", "sensitivity", "ETA --") + "  loading",
    _bar(10.0, "running", "sensitivity", "ETA 1m30s") + "  sensitivity 1/4",
    _bar(10.0, "running", "sensitivity", "ETA 1m48s") + "  a report going backwards",  # 10 %, not 8 %
    _bar(30.0, "running", "sensitivity", "ETA 0m47s") + "  sensitivity 4/4",
    _bar(100.0, "succeeded", "sensitivity", "ETA --") + "  done",  # the terminal event
    _bar(100.0, "succeeded", "sensitivity", "ETA --") + "  done",  # the job fetched after the stream
]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_follow_on_a_terminal_redraws_the_bar_with_each_events_eta(capsys, monkeypatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with RecordedStream(EVENTS) as stream:
        assert main(["status", JOB_ID, "--follow", "--url", stream.url, "--key", "k"]) == 0
    drawn = terminal.getvalue()
    assert drawn.startswith("\r") and drawn.endswith("\n"), repr(drawn)
    assert [frame.rstrip() for frame in drawn[1:-1].split("\r")] == TERMINAL_FRAMES
    assert capsys.readouterr().out == f"{JOB_ID}  succeeded  100.0%  stage=sensitivity  done\n"


def test_follow_in_a_log_prints_a_line_per_status_or_stage(capsys) -> None:
    with RecordedStream(EVENTS) as stream:
        assert main(["status", JOB_ID, "--follow", "--url", stream.url, "--key", "k"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        _bar(0.0, "queued", "-", "ETA --"),
        _bar(0.0, "running", "-", "ETA --"),
        _bar(0.0, "running", "load", "ETA --"),
        _bar(2.0, "running", "sensitivity", "ETA --"),  # printed when the stage starts, before its first ETA
        _bar(100.0, "succeeded", "sensitivity", "ETA --"),
    ]
    assert out == f"{JOB_ID}  succeeded  100.0%  stage=sensitivity  done\n"


def _without(data: dict, *keys: str) -> dict:
    return {key: value for key, value in data.items() if key not in keys}


def _drive_when_queued(live: LiveServer, workdir: Path) -> threading.Thread:
    """Drive the first queued job of a ``cli-`` tenant once it is there."""

    def queued_cli_job() -> uuid.UUID | None:
        with live.app.state.session_factory() as session:
            return session.scalar(
                select(Job.id)
                .join(Tenant, Tenant.id == Job.tenant_id)
                .where(Job.status == JobStatus.QUEUED, Tenant.name.startswith("cli-"))
            )

    def run() -> None:
        drive_job(live.app, wait_until(queued_cli_job, 300, message="mpq submit's job"), workdir)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_cli_submit_wait_and_status_follow_end_at_the_final_status(live, tmp_path, capsys) -> None:
    """The real commands against a live job; when each event arrives is up to the machine, so this checks only
    what does not depend on it (the bar itself is checked on the recorded stream above)."""
    with live.app.state.session_factory() as session:
        cli_key = create_key(session, f"cli-{uuid.uuid4().hex[:8]}").key
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(SPEC))
    driver = _drive_when_queued(live, tmp_path / "work")
    code = main(["submit", str(spec), "--wait", "--url", live.url, "--key", cli_key])
    driver.join(timeout=300)
    assert not driver.is_alive(), "the job driver did not finish"
    out, err = capsys.readouterr()
    assert code == 0, err
    job_id = out.splitlines()[0].strip()
    assert "succeeded" in out.splitlines()[-1] and "100.0%" in out.splitlines()[-1]
    bars = [line for line in err.splitlines() if line.startswith("[")]
    percents = [float(line.split("]")[1].split("%")[0]) for line in bars]
    assert percents == sorted(percents) and percents[-1] == 100.0, err
    # which events a line shows depends on when the CLI reads them, but every ETA is a recorded one
    shown = {line[line.index("ETA") :] for line in bars}
    assert shown <= {"ETA --", "ETA 1m30s", "ETA 1m48s", "ETA 0m47s"}, err
    assert bars[-1].split()[2:] == ["succeeded", "stage=sensitivity", "ETA", "--"], err
    assert main(["status", job_id, "--follow", "--url", live.url, "--key", cli_key]) == 0
    out, err = capsys.readouterr()
    assert "succeeded" in out and "100.0%" in err
