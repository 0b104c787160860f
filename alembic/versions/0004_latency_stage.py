"""latency stage: every job gets a ``latency`` stage row between ``sensitivity`` and ``allocate``

The pipeline gained a stage (``quant.config.STAGES``: load, sensitivity, latency, allocate, reconstruct, evaluate,
export) that measures an ``onnxruntime-cpu`` job's per-layer latency table. New jobs get its row when they are
created; this migration adds it to existing jobs, so their stage lists match and a queued or interrupted job
resumes with the same stages as a new one: ``skipped`` for finished jobs (they never ran it), ``pending`` for
queued and running ones (the pipeline decides). The stages after it move one position down.

Revision ID: 0004_latency_stage
Revises: 0003_hardening
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_latency_stage"
down_revision: str | None = "0003_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Position of the new stage (after load 0 and sensitivity 1), frozen as of this revision.
_POSITION = 2
_WITHOUT_LATENCY = (
    "job_id IN (SELECT job_id FROM job_stages WHERE name = 'sensitivity') "
    "AND job_id NOT IN (SELECT job_id FROM job_stages WHERE name = 'latency')"
)


def upgrade() -> None:
    op.execute(
        f"UPDATE job_stages SET position = position + 1 WHERE position >= {_POSITION} AND {_WITHOUT_LATENCY}"
    )
    op.execute(
        "INSERT INTO job_stages (job_id, name, position, status) "
        f"SELECT id, 'latency', {_POSITION}, CASE WHEN status IN ('succeeded', 'failed', 'cancelled') "
        "THEN 'skipped' ELSE 'pending' END FROM jobs "
        "WHERE id IN (SELECT job_id FROM job_stages WHERE name = 'sensitivity') "
        "AND id NOT IN (SELECT job_id FROM job_stages WHERE name = 'latency')"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE job_stages SET position = position - 1 "
        f"WHERE position > {_POSITION} AND job_id IN (SELECT job_id FROM job_stages WHERE name = 'latency')"
    )
    op.execute("DELETE FROM job_stages WHERE name = 'latency'")
