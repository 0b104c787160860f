"""hardening: an artifact's kind belongs to the artifact: unique (tenant, sha256, kind) instead of (tenant, sha256)

Revision ID: 0003_hardening
Revises: 0002_mlops
Create Date: 2026-12-01 02:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_hardening"
down_revision: str | None = "0002_mlops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_artifacts_tenant_id", type_="unique")
        batch_op.create_unique_constraint("uq_artifacts_tenant_id", ["tenant_id", "sha256", "kind"])


def downgrade() -> None:
    # Rows that share bytes under two kinds cannot both survive the old constraint: keep the oldest of each.
    op.execute(
        "DELETE FROM artifacts WHERE id IN (SELECT a.id FROM artifacts a JOIN artifacts b "
        "ON a.tenant_id = b.tenant_id AND a.sha256 = b.sha256 AND a.created_at > b.created_at)"
    )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_artifacts_tenant_id", type_="unique")
        batch_op.create_unique_constraint("uq_artifacts_tenant_id", ["tenant_id", "sha256"])
