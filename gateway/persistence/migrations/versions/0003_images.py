"""images: image builds and the images of the content-addressed store

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22 00:59:31.657705
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_builds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("image_id", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column(
            "state",
            sa.Enum("queued", "running", "succeeded", "failed", name="buildstate", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("leader_id", sa.String(length=32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["leader_id"], ["image_builds.id"], name=op.f("fk_image_builds_leader_id_image_builds"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_builds")),
    )
    with op.batch_alter_table("image_builds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_builds_image_id"), ["image_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_builds_leader_id"), ["leader_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_builds_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_image_builds_state"), ["state"], unique=False)

    op.create_table(
        "images",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=80), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("builder", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
    )
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_images_owner_id"), ["owner_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_owner_id"))
    op.drop_table("images")
    with op.batch_alter_table("image_builds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_builds_state"))
        batch_op.drop_index(batch_op.f("ix_image_builds_owner_id"))
        batch_op.drop_index(batch_op.f("ix_image_builds_leader_id"))
        batch_op.drop_index(batch_op.f("ix_image_builds_image_id"))
    op.drop_table("image_builds")
