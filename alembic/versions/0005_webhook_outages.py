"""webhook outages and rotation: an endpoint remembers since when it has been failing, and a rotated-out secret
with the end of its overlap window

``failing_since`` replaces the count of consecutive failures as the reason to disable an endpoint (an endpoint
is disabled once it has failed for ``MPQ_WEBHOOK_DISABLE_AFTER_SECONDS``); ``previous_secret`` signs deliveries
next to the new secret until ``previous_secret_expires_at``. Existing rows start with no failure period and no
previous secret.

Revision ID: 0005_webhook_outages
Revises: 0004_latency_stage
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

import service.db
from alembic import op

revision: str = "0005_webhook_outages"
down_revision: str | None = "0004_latency_stage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failing_since", service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("previous_secret", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", service.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("updated_at", service.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret")
        batch_op.drop_column("failing_since")
