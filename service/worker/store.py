"""The pipeline's ``StageStore`` backed by the job's stage rows and a persistent work folder.

``load(stage)`` returns the output of a finished (or reused, or skipped) stage so the pipeline skips it; ``save``
records a stage's output and end time, guarded by the run's lease (an output ``{"skipped": true, ...}`` marks the
stage ``skipped``: the pipeline decided it had nothing to do). ``workdir`` (``<artifact_dir>/jobs/<id>/work``) keeps
finer checkpoints (e.g. reconstructed blocks) across restarts. Blobs a stage output names (the parameter table,
reconstructed params) go to the artifact store's content-addressed blobs, where a reallocated job finds its parent's.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.artifact.storage import BlobStore
from service.db import session_scope, utcnow
from service.events.recorder import record_stage
from service.job.repository import JobRepository
from service.jsonable import jsonable
from service.models import StageStatus

__all__ = ["DBStageStore", "LeaseLost"]


class LeaseLost(Exception):
    """This run no longer owns the job (it was re-queued after a missed heartbeat or cancelled elsewhere)."""


class DBStageStore:
    """Stage checkpoints of one run of one job."""

    def __init__(
        self,
        job_id: uuid.UUID,
        lease_id: str,
        session_factory: sessionmaker[Session],
        workdir: Path,
        blobs: BlobStore | None = None,
    ):
        self.job_id = job_id
        self.lease_id = lease_id
        self.session_factory = session_factory
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: the artifact store's blobs (shared by every job); a store of its own under ``workdir`` when not given
        self.blobs = blobs or BlobStore(self.workdir)

    def put_blob(self, path: Path, sha256: str) -> None:
        """Move the finished file ``path`` (whose digest is ``sha256``) into the blob store."""
        target = self.blobs.blob_path(sha256)
        if target.exists():
            Path(path).unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def blob_path(self, sha256: str) -> Path | None:
        """The blob with this digest, or None when the store does not have it."""
        path = self.blobs.blob_path(sha256)
        return path if path.is_file() else None

    def load(self, stage: str) -> dict[str, Any] | None:
        """The JSON output of ``stage`` if it already finished (or was reused from a parent job)."""
        with session_scope(self.session_factory) as session:
            return JobRepository(session).stage_output(self.job_id, stage)

    def save(self, stage: str, output: dict[str, Any]) -> None:
        """Record ``stage`` as finished with ``output``; raises :class:`LeaseLost` if the run lost the job."""
        payload = jsonable(output)
        with session_scope(self.session_factory) as session:
            repository = JobRepository(session)
            if not repository.touch(self.job_id, self.lease_id):
                session.rollback()
                raise LeaseLost(f"job {self.job_id}: lease lost while saving stage {stage!r}")
            now = utcnow()
            stage_row = repository.stage(self.job_id, stage)
            skipped = payload.get("skipped") is True
            repository.set_stage(
                self.job_id,
                stage,
                status=StageStatus.SKIPPED if skipped else StageStatus.FINISHED,
                started_at=None if stage_row is None or stage_row.started_at else now,
                finished_at=now,
                output=payload,
            )
            started = stage_row.started_at if stage_row is not None else None
            seconds = (now - started).total_seconds() if started is not None else None
            record_stage(session, self.job_id, stage, "skipped" if skipped else "finished", seconds=seconds)
            session.commit()
