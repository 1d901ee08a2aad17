"""executions: workflow_name is the registered workflow's name; the TOSCA workflow is tosca_workflow;
an index to count a user's executions in flight

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.alter_column("workflow_name", new_column_name="tosca_workflow", existing_type=sa.String(length=64),
                              existing_nullable=False)
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("workflow_name", sa.String(length=64), nullable=True))
    op.execute("UPDATE executions SET workflow_name = "
               "(SELECT workflows.name FROM workflows WHERE workflows.id = executions.workflow_id)")
    op.create_index("ix_executions_owner_id_state", "executions", ["owner_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_executions_owner_id_state", table_name="executions")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("workflow_name")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.alter_column("tosca_workflow", new_column_name="workflow_name", existing_type=sa.String(length=64),
                              existing_nullable=False)
