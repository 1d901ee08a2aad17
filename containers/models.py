"""Persisted image builds and images, on the shared declarative base (migration ``0003``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hpcwaas.db import Base, new_id, utcnow


class BuildState(enum.StrEnum):
    """The lifecycle of a build request: ``queued -> running -> succeeded | failed``.

    A request identical to a build in flight *joins* it (``leader_id``) and follows its state;
    a request whose image is already in the store is ``succeeded`` at once, with ``cached``.
    """

    QUEUED = "queued"
    """Accepted and persisted; waiting for a worker (or for the build it joined)."""

    RUNNING = "running"
    """A worker holds the lease and runs ``apptainer build``. If the worker dies (a gateway
    restart), the lease expires and another worker resumes the build from its saved inputs,
    at most ``MAX_ATTEMPTS`` times in all."""

    SUCCEEDED = "succeeded"
    """The image is in the store (built by this request, by the one it joined, or cached)."""

    FAILED = "failed"
    """Stopped for good; ``message`` says why: the tool's own errors (apt, debootstrap,
    apptainer), a timeout, an unavailable builder, or too many interruptions."""


TERMINAL_STATES = frozenset({BuildState.SUCCEEDED, BuildState.FAILED})
ACTIVE_STATES = frozenset({BuildState.QUEUED, BuildState.RUNNING})
MAX_ATTEMPTS = 3


def _enum(cls: type[enum.Enum], length: int) -> Enum:
    return Enum(cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e])


class ImageBuild(Base):
    """One build request. Owners are user ids of the host application (no foreign key: the
    image service also runs without the gateway's tables)."""

    __tablename__ = "image_builds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "spec" or "dockerfile"
    owner_id: Mapped[str | None] = mapped_column(String(32), index=True)
    state: Mapped[BuildState] = mapped_column(_enum(BuildState, 16), index=True)
    cached: Mapped[bool] = mapped_column(default=False)
    leader_id: Mapped[str | None] = mapped_column(ForeignKey("image_builds.id", ondelete="SET NULL"), index=True)
    message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class Image(Base):
    """An image in the store, as the database lists it (the store holds the file)."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(64))
    owner_id: Mapped[str | None] = mapped_column(String(32), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(80))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    builder: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
