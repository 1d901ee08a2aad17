"""catalogue: keyword rows carry their dataset's sort keys; reader index covers the dataset key

A keyword listing ("datasets with keyword k, newest first, 50 per page") used to read every
dataset with the keyword (thousands for a common one, each a lookup in the table for its dataset
key and another for its sort key and access) and sort them. The keyword rows now carry copies of
their dataset's title, created and modified times (catalogue.service keeps them equal), indexed
as (keyword, sort key, dataset_pk): the listing walks one keyword's entries already in order and
stops at the page's end. Those indexes also cover "the datasets with keyword k", so the index on
the keyword alone goes. Likewise the readers' index on (username, dataset_pk) answers "the
datasets user u was granted" from the index alone.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYWORDS = "catalogue_dataset_keywords"
READERS = "catalogue_dataset_readers"
SORT_KEYS = ("modified", "created", "title")


def upgrade() -> None:
    with op.batch_alter_table(KEYWORDS, schema=None) as batch_op:
        batch_op.add_column(sa.Column("title", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("modified_at", sa.DateTime(timezone=True), nullable=True))
    # Correlated subqueries: the same statement on SQLite and PostgreSQL.
    op.execute(
        f"UPDATE {KEYWORDS} SET "
        + ", ".join(f"{c} = (SELECT d.{c} FROM catalogue_datasets d WHERE d.pk = {KEYWORDS}.dataset_pk)"
                    for c in ("title", "created_at", "modified_at"))
    )
    with op.batch_alter_table(KEYWORDS, schema=None) as batch_op:
        batch_op.alter_column("title", existing_type=sa.String(length=300), nullable=False)
        batch_op.alter_column("created_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column("modified_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.drop_index("ix_catalogue_dataset_keywords_keyword")
        batch_op.create_index("ix_catalogue_dataset_keywords_modified", ["keyword", "modified_at", "dataset_pk"],
                              unique=False)
        batch_op.create_index("ix_catalogue_dataset_keywords_created", ["keyword", "created_at", "dataset_pk"],
                              unique=False)
        batch_op.create_index("ix_catalogue_dataset_keywords_title", ["keyword", "title", "dataset_pk"],
                              unique=False)
    with op.batch_alter_table(READERS, schema=None) as batch_op:
        batch_op.drop_index("ix_catalogue_dataset_readers_username")
        batch_op.create_index("ix_catalogue_dataset_readers_username_pk", ["username", "dataset_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table(READERS, schema=None) as batch_op:
        batch_op.drop_index("ix_catalogue_dataset_readers_username_pk")
        batch_op.create_index("ix_catalogue_dataset_readers_username", ["username"], unique=False)
    with op.batch_alter_table(KEYWORDS, schema=None) as batch_op:
        for key in SORT_KEYS:
            batch_op.drop_index(f"ix_catalogue_dataset_keywords_{key}")
        batch_op.create_index("ix_catalogue_dataset_keywords_keyword", ["keyword"], unique=False)
        batch_op.drop_column("modified_at")
        batch_op.drop_column("created_at")
        batch_op.drop_column("title")
