"""security: who submitted each ad-hoc batch job (adhoc_jobs); sites.ssh_certificates

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 03:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ssh_certificates", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "adhoc_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("login", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_adhoc_jobs_owner_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name=op.f("fk_adhoc_jobs_site_id_sites"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adhoc_jobs")),
    )
    with op.batch_alter_table("adhoc_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_adhoc_jobs_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_adhoc_jobs_site_id_job_id"), ["site_id", "job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adhoc_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adhoc_jobs_site_id_job_id"))
        batch_op.drop_index(batch_op.f("ix_adhoc_jobs_owner_id"))
    op.drop_table("adhoc_jobs")
    with op.batch_alter_table("sites", schema=None) as batch_op:
        batch_op.drop_column("ssh_certificates")
