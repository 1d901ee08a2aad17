"""catalogue: datasets, storage targets, readers, keywords, history and the full-text index

The full-text index is dialect-specific DDL: an FTS5 virtual table kept in sync by triggers on
SQLite, a GIN expression index on PostgreSQL (which PostgreSQL keeps in sync itself). Queries in
``catalogue.search`` use the same expressions. Nothing here imports application code.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:52:42.482432
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


FTS = "catalogue_datasets_fts"
PG_DOCUMENT = (
    "to_tsvector('simple'::regconfig, coalesce(title, '') || ' ' || coalesce(description, '') || ' ' "
    "|| coalesce(keywords::text, ''))"
)
SQLITE_SEARCH = [
    # External content: the index reads title/description/keywords from catalogue_datasets by pk.
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(title, description, keywords, content='catalogue_datasets', "
    "content_rowid='pk', tokenize='unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER {FTS}_ai AFTER INSERT ON catalogue_datasets BEGIN
        INSERT INTO {FTS}(rowid, title, description, keywords)
        VALUES (new.pk, new.title, new.description, new.keywords);
    END""",
    f"""CREATE TRIGGER {FTS}_ad AFTER DELETE ON catalogue_datasets BEGIN
        INSERT INTO {FTS}({FTS}, rowid, title, description, keywords)
        VALUES ('delete', old.pk, old.title, old.description, old.keywords);
    END""",
    f"""CREATE TRIGGER {FTS}_au AFTER UPDATE OF title, description, keywords ON catalogue_datasets BEGIN
        INSERT INTO {FTS}({FTS}, rowid, title, description, keywords)
        VALUES ('delete', old.pk, old.title, old.description, old.keywords);
        INSERT INTO {FTS}(rowid, title, description, keywords)
        VALUES (new.pk, new.title, new.description, new.keywords);
    END""",
]


def create_search_index() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in SQLITE_SEARCH:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(f"CREATE INDEX ix_catalogue_datasets_search ON catalogue_datasets USING gin ({PG_DOCUMENT})")


def drop_search_index() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for suffix in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_catalogue_datasets_search")


def upgrade() -> None:
    op.create_table(
        "catalogue_dataset_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=32), nullable=True),
        sa.Column("actor_name", sa.String(length=64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_dataset_versions")),
        sa.UniqueConstraint("dataset_id", "revision", name="uq_catalogue_dataset_versions_revision"),
    )
    with op.batch_alter_table("catalogue_dataset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalogue_dataset_versions_dataset_id"), ["dataset_id"], unique=False)

    op.create_table(
        "catalogue_storage_targets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=255), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("base_path", sa.String(length=1024), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("owner_name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalogue_storage_targets")),
        sa.UniqueConstraint("name", name=op.f("uq_catalogue_storage_targets_name")),
    )
    op.create_table(
        "catalogue_datasets",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("location_url", sa.String(length=2048), nullable=True),
        sa.Column("storage_target_id", sa.String(length=32), nullable=True),
        sa.Column("location_path", sa.String(length=1024), nullable=True),
        sa.Column("protocol", sa.String(length=16), nullable=True),
        sa.Column("site", sa.String(length=255), nullable=True),
        sa.Column("format", sa.String(length=100), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("checksum_sha256", sa.String(length=64), nullable=True),
        sa.Column("license", sa.String(length=200), nullable=True),
        sa.Column("creators", sa.JSON(), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("access", sa.String(length=16), nullable=False),
        sa.Column("doi", sa.String(length=255), nullable=True),
        sa.Column("handle", sa.String(length=255), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=False),
        sa.Column("owner_name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_target_id"],
            ["catalogue_storage_targets.id"],
            name=op.f("fk_catalogue_datasets_storage_target_id_catalogue_storage_targets"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_catalogue_datasets")),
        sa.UniqueConstraint("id", name=op.f("uq_catalogue_datasets_id")),
    )
    with op.batch_alter_table("catalogue_datasets", schema=None) as batch_op:
        batch_op.create_index("ix_catalogue_datasets_access", ["access", "modified_at"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_created", ["created_at", "pk"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_format", ["format", "modified_at"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_modified", ["modified_at", "pk"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_owner", ["owner_name", "modified_at"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_site", ["site", "modified_at"], unique=False)
        batch_op.create_index("ix_catalogue_datasets_size", ["size_bytes", "pk"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_catalogue_datasets_storage_target_id"), ["storage_target_id"], unique=False
        )
        batch_op.create_index("ix_catalogue_datasets_title", ["title", "pk"], unique=False)

    op.create_table(
        "catalogue_dataset_keywords",
        sa.Column("dataset_pk", sa.Integer(), nullable=False),
        sa.Column("keyword", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_pk"],
            ["catalogue_datasets.pk"],
            name=op.f("fk_catalogue_dataset_keywords_dataset_pk_catalogue_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_pk", "keyword", name=op.f("pk_catalogue_dataset_keywords")),
    )
    with op.batch_alter_table("catalogue_dataset_keywords", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalogue_dataset_keywords_keyword"), ["keyword"], unique=False)

    op.create_table(
        "catalogue_dataset_readers",
        sa.Column("dataset_pk", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_pk"],
            ["catalogue_datasets.pk"],
            name=op.f("fk_catalogue_dataset_readers_dataset_pk_catalogue_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset_pk", "username", name=op.f("pk_catalogue_dataset_readers")),
    )
    with op.batch_alter_table("catalogue_dataset_readers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_catalogue_dataset_readers_username"), ["username"], unique=False)

    create_search_index()


def downgrade() -> None:
    drop_search_index()
    with op.batch_alter_table("catalogue_dataset_readers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_dataset_readers_username"))

    op.drop_table("catalogue_dataset_readers")
    with op.batch_alter_table("catalogue_dataset_keywords", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_dataset_keywords_keyword"))

    op.drop_table("catalogue_dataset_keywords")
    with op.batch_alter_table("catalogue_datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_catalogue_datasets_title")
        batch_op.drop_index(batch_op.f("ix_catalogue_datasets_storage_target_id"))
        batch_op.drop_index("ix_catalogue_datasets_size")
        batch_op.drop_index("ix_catalogue_datasets_site")
        batch_op.drop_index("ix_catalogue_datasets_owner")
        batch_op.drop_index("ix_catalogue_datasets_modified")
        batch_op.drop_index("ix_catalogue_datasets_format")
        batch_op.drop_index("ix_catalogue_datasets_created")
        batch_op.drop_index("ix_catalogue_datasets_access")

    op.drop_table("catalogue_datasets")
    op.drop_table("catalogue_storage_targets")
    with op.batch_alter_table("catalogue_dataset_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_dataset_versions_dataset_id"))

    op.drop_table("catalogue_dataset_versions")
