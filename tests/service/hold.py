"""Hold a job at the start of one of its stages inside a real worker process, so that a test can kill the worker
or cancel the job mid-run without racing it.

Start the server or workers with ``hold_env(folder)`` and name the job ``hold:<stage>`` (e.g. ``hold:sensitivity``).
Right after the job's worker has recorded the start of that stage (earlier stages are checkpointed by then) it
writes ``<folder>/<job id>.held`` with its pid and waits until :func:`release` or until the job is cancelled or
the worker is stopped. Only the first run holds; a run resumed after a kill passes through. The worker side is
``hold_site/sitecustomize.py``, loaded through ``PYTHONPATH`` by every Python process started with this environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.waiting import wait_until

__all__ = ["hold_env", "release", "wait_held"]

SITE = Path(__file__).resolve().parent / "hold_site"


def hold_env(folder: Path) -> dict[str, str]:
    """Environment variables that make the processes started with them hold ``hold:<stage>`` jobs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "MPQ_TEST_HOLD_DIR": str(folder)}


def wait_held(folder: Path, job_id: str, timeout: float = 300, message=None) -> int:
    """Wait until job ``job_id`` is held and return the pid of the worker process holding it."""
    held = folder / f"{job_id}.held"
    text = wait_until(
        lambda: held.is_file() and held.read_text(),
        timeout,
        message=message or f"job {job_id} to reach its held stage",
    )
    return int(text)


def release(folder: Path, job_id: str) -> None:
    """Let a held job go on."""
    (folder / f"{job_id}.release").touch()
