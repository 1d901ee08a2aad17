"""Tables of the data catalogue, on the shared declarative ``Base`` (one Alembic history).

Users are referred to by id and name, not by foreign key: the catalogue works without the
gateway's tables. The full-text index lives outside the ORM metadata (an FTS5 virtual table on
SQLite, a GIN expression index on PostgreSQL, both made by migration ``0002``); the hook at the
end of this module keeps Alembic's autogenerate from proposing to drop them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hpcwaas.db import Base, new_id, utcnow

# Names of the search objects made by the migration (see catalogue.search).
FTS_TABLE = "catalogue_datasets_fts"
FTS_SHADOW_TABLES = frozenset({FTS_TABLE, *(f"{FTS_TABLE}_{s}" for s in ("data", "idx", "docsize", "config"))})
PG_SEARCH_INDEX = "ix_catalogue_datasets_search"


class StorageTarget(Base):
    """A place datasets live: a site (or host), a protocol and a base path."""

    __tablename__ = "catalogue_storage_targets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    site: Mapped[str] = mapped_column(String(255))
    protocol: Mapped[str] = mapped_column(String(16))
    base_path: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str | None] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(String(32))
    owner_name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A dataset with its FAIR metadata. ``id`` is the stable public identifier; ``pk`` is the
    integer row key the SQLite full-text index refers to."""

    __tablename__ = "catalogue_datasets"
    __table_args__ = (
        Index("ix_catalogue_datasets_modified", "modified_at", "pk"),
        Index("ix_catalogue_datasets_created", "created_at", "pk"),
        Index("ix_catalogue_datasets_title", "title", "pk"),
        Index("ix_catalogue_datasets_size", "size_bytes", "pk"),
        Index("ix_catalogue_datasets_access", "access", "modified_at"),
        Index("ix_catalogue_datasets_owner", "owner_name", "modified_at"),
        Index("ix_catalogue_datasets_format", "format", "modified_at"),
        Index("ix_catalogue_datasets_site", "site", "modified_at"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True, default=new_id)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    # Where it is: a URL, or a storage target plus a path under its base path (or nowhere yet).
    location_url: Mapped[str | None] = mapped_column(String(2048))
    storage_target_id: Mapped[str | None] = mapped_column(
        ForeignKey("catalogue_storage_targets.id", ondelete="RESTRICT"), index=True
    )
    location_path: Mapped[str | None] = mapped_column(String(1024))
    # Derived from the location when it is set, kept for filtering and resolution.
    protocol: Mapped[str | None] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(String(255))
    format: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    checksum_sha256: Mapped[str | None] = mapped_column(String(64))
    license: Mapped[str | None] = mapped_column(String(200))
    creators: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    keywords: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str | None] = mapped_column(String(64))
    access: Mapped[str] = mapped_column(String(16))
    doi: Mapped[str | None] = mapped_column(String(255))
    handle: Mapped[str | None] = mapped_column(String(255))
    extra_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    owner_id: Mapped[str] = mapped_column(String(32))
    owner_name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(default=utcnow)
    revision: Mapped[int] = mapped_column(Integer, default=1)

    # Loaded on access: listings need neither (a target is usually in the identity map already).
    storage_target: Mapped[StorageTarget | None] = relationship()
    keyword_rows: Mapped[list[DatasetKeyword]] = relationship(cascade="all, delete-orphan", passive_deletes=True)
    reader_rows: Mapped[list[DatasetReader]] = relationship(cascade="all, delete-orphan", passive_deletes=True)

    @property
    def readers(self) -> list[str]:
        return sorted(r.username for r in self.reader_rows)


class DatasetKeyword(Base):
    """One keyword of a dataset (normalised), for exact keyword filters.

    It also carries copies of its dataset's sort keys (title, created, modified; kept equal by
    catalogue.service, migration 0006), so a keyword listing walks that keyword's entries already
    in the page's order instead of reading and sorting every dataset with the keyword."""

    __tablename__ = "catalogue_dataset_keywords"
    __table_args__ = (
        Index("ix_catalogue_dataset_keywords_modified", "keyword", "modified_at", "dataset_pk"),
        Index("ix_catalogue_dataset_keywords_created", "keyword", "created_at", "dataset_pk"),
        Index("ix_catalogue_dataset_keywords_title", "keyword", "title", "dataset_pk"),
    )

    dataset_pk: Mapped[int] = mapped_column(ForeignKey("catalogue_datasets.pk", ondelete="CASCADE"), primary_key=True)
    keyword: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column()
    modified_at: Mapped[datetime] = mapped_column()


class DatasetReader(Base):
    """A user allowed to read a restricted dataset besides its owner and the admins."""

    __tablename__ = "catalogue_dataset_readers"
    # Covers "the datasets this user was granted" (migration 0006).
    __table_args__ = (Index("ix_catalogue_dataset_readers_username_pk", "username", "dataset_pk"),)

    dataset_pk: Mapped[int] = mapped_column(ForeignKey("catalogue_datasets.pk", ondelete="CASCADE"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True)


class DatasetVersion(Base):
    """One change of a dataset: who, when, which fields, and the entry as it was after it.

    Kept when the dataset is deleted (the last row records the deletion)."""

    __tablename__ = "catalogue_dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "revision", name="uq_catalogue_dataset_versions_revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # created, updated, deleted
    actor_id: Mapped[str | None] = mapped_column(String(32))
    actor_name: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    changes: Mapped[list[str]] = mapped_column(JSON, default=list)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def _leave_search_objects_alone() -> None:
    """Register an autogenerate comparator that drops the ops touching the search objects.

    The FTS5 virtual table (and its shadow tables) and the PostgreSQL expression index are made
    by hand in migration 0002 and are not in the metadata, so autogenerate would otherwise offer
    to drop them. Registered on Alembic's global comparator registry (its documented hook for
    third-party comparators), at the lowest priority so it sees the default comparators' ops.
    """
    try:
        from alembic.autogenerate.compare import comparators
        from alembic.operations import ops
        from alembic.util import DispatchPriority, PriorityDispatchResult
    except ImportError:  # Alembic is not installed: nothing to do
        return

    def is_search_op(op: Any) -> bool:
        if isinstance(op, ops.DropTableOp):
            return op.table_name in FTS_SHADOW_TABLES
        if isinstance(op, ops.DropIndexOp):
            return op.index_name == PG_SEARCH_INDEX
        return False

    def drop_search_ops(_context: Any, upgrade_ops: ops.UpgradeOps, _schemas: Any) -> PriorityDispatchResult:
        kept: list[Any] = []
        for op in upgrade_ops.ops:
            if isinstance(op, ops.ModifyTableOps):
                op.ops = [o for o in op.ops if not is_search_op(o)]
                if not op.ops:
                    continue
            elif is_search_op(op):
                continue
            kept.append(op)
        upgrade_ops.ops = kept
        return PriorityDispatchResult.CONTINUE

    comparators.dispatch_for("schema", priority=DispatchPriority.LAST, subgroup="catalogue_search")(drop_search_ops)


_leave_search_objects_alone()
