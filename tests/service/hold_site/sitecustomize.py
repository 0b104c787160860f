"""Test-only: holds a job at the start of a stage inside a worker subprocess (see :mod:`tests.service.hold`).

Python imports this file at start-up in every process whose ``PYTHONPATH`` has this folder, which is how the hold
reaches the ``mpq serve`` process's embedded worker and ``mpq worker`` processes. Without ``MPQ_TEST_HOLD_DIR`` it
does nothing.
"""

from __future__ import annotations

import os

#: Seconds a job is held at most when the test never releases it (a failed test must not hang its worker).
HOLD_MAX_SECONDS = 900.0


def _install(folder: str) -> None:
    import time
    from pathlib import Path

    from service.worker.job_run import JobRun

    original = JobRun.progress

    def hold(run: JobRun) -> None:
        held = Path(folder) / f"{run.job_id}.held"
        try:  # only the first run of the job holds: a resumed run passes straight through
            fd = os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        release = Path(folder) / f"{run.job_id}.release"
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        while not release.exists() and not run.should_cancel() and time.monotonic() < deadline:
            time.sleep(0.05)

    def progress(self: JobRun, stage: str, fraction: float, message: str) -> None:
        entering = stage != self.current_stage
        original(self, stage, fraction, message)  # the stage's start is in the database before the hold
        if entering and self.spec is not None and self.spec.name == f"hold:{stage}":
            hold(self)

    JobRun.progress = progress


if os.environ.get("MPQ_TEST_HOLD_DIR"):
    _install(os.environ["MPQ_TEST_HOLD_DIR"])
