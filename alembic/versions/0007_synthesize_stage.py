"""synthesize stage: every job gets a ``synthesize`` stage row right after ``load``

Data-free jobs generate their calibration images in a ``synthesize`` stage (``quant.pipeline.synthesize``), stored
as a blob so a resumed job and a reallocation reuse them; jobs with calibration data record it as ``skipped``. New
jobs get its row when they are created; this migration adds it to existing jobs, as 0006 did for ``calibrate``:
``skipped`` for finished jobs (they never ran it), ``pending`` for queued and running ones (the pipeline decides).
The stages after it move one position down.

Revision ID: 0007_synthesize_stage
Revises: 0006_calibrate_stage
Create Date: 2026-12-06 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_synthesize_stage"
down_revision: str | None = "0006_calibrate_stage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Position of the new stage (after load 0), frozen as of this revision.
_POSITION = 1
_WITHOUT_STAGE = (
    "job_id IN (SELECT job_id FROM job_stages WHERE name = 'load') "
    "AND job_id NOT IN (SELECT job_id FROM job_stages WHERE name = 'synthesize')"
)


def upgrade() -> None:
    op.execute(
        f"UPDATE job_stages SET position = position + 1 WHERE position >= {_POSITION} AND {_WITHOUT_STAGE}"
    )
    op.execute(
        "INSERT INTO job_stages (job_id, name, position, status) "
        f"SELECT id, 'synthesize', {_POSITION}, CASE WHEN status IN ('succeeded', 'failed', 'cancelled') "
        "THEN 'skipped' ELSE 'pending' END FROM jobs "
        "WHERE id IN (SELECT job_id FROM job_stages WHERE name = 'load') "
        "AND id NOT IN (SELECT job_id FROM job_stages WHERE name = 'synthesize')"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE job_stages SET position = position - 1 "
        f"WHERE position > {_POSITION} AND job_id IN (SELECT job_id FROM job_stages WHERE name = 'synthesize')"
    )
    op.execute("DELETE FROM job_stages WHERE name = 'synthesize'")
