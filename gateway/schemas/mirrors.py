"""Mirrors: a catalogue storage target kept in sync with a path on a site."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from gateway.schemas.common import Login, ORMModel, RequestModel
from hpcwaas.text import MIRROR_PATH, published


def _relative(value: str) -> str:
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if value.startswith("/") or ".." in parts:
        raise ValueError("must be a relative path without '..'")
    if any(ord(c) < 32 for c in value):
        raise ValueError("must not hold control characters")
    return "/".join(parts)


RelativePath = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_relative), published(MIRROR_PATH)]
MirrorName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]


class MirrorCreate(RequestModel):
    """What to mirror where, with which of your SSH keys."""

    name: MirrorName = Field(description="1-63 characters: lower-case letters, digits and '-'.")
    description: str | None = Field(default=None, max_length=2000)
    storage_target: str = Field(max_length=64, description="Name or id of a catalogue storage target you own.")
    path: RelativePath = Field(default="", description="A folder under the storage target's base path ('' = all).")
    site: str = Field(max_length=64, description="The registered site to keep the copy on.")
    site_path: RelativePath = Field(min_length=1, description="Where, relative to your work dir on the site.")
    ssh_key: str = Field(description="Id of your SSH key for the site (and for a site storage target).")
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")


class MirrorOut(ORMModel):
    id: str
    name: str
    description: str | None
    owner_id: str
    storage_target_id: str
    source_path: str
    site_id: str
    site_path: str
    ssh_key_id: str
    login: str
    enabled: bool
    runs: int = Field(description="Sync runs started so far.")
    last_run_id: str | None = Field(description="The newest sync run (see GET /pipelines/sync/runs/{id}).")
    last_triggered_at: datetime | None
    last_error: str | None = Field(description="Why the newest sync could not start, if it could not.")
    wake_at: datetime | None = Field(description="When the next sync starts (null: disabled).")
    created_at: datetime
