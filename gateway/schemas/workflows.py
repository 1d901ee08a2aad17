"""Workflows in the registry and their immutable versions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from gateway.persistence.models import Visibility
from gateway.schemas.common import ORMModel, RequestModel, Username

WorkflowName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$"),
    Field(description="1-63 characters: lower-case letters, digits and '-'; starts with a letter."),
]
Group = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]


# Text that reaches a path or a git command line: no control characters (a NUL was a 500).
PlainText = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]


class GitSource(RequestModel):
    kind: Literal["git"]
    url: PlainText = Field(min_length=1, max_length=1024, description="A local repository path or file:// URL.")
    ref: PlainText = Field(default="HEAD", min_length=1, max_length=200, description="Branch, tag or commit.")
    subpath: PlainText = Field(default="", max_length=500, description="Folder of the workflow inside the repository.")


class FolderSource(RequestModel):
    kind: Literal["folder"]
    path: PlainText = Field(min_length=1, max_length=1024, description="A folder under a registry root.")


class VisibilityIn(RequestModel):
    mode: Visibility = Visibility.PUBLIC
    users: list[Username] = Field(default_factory=list, max_length=1000)
    groups: list[Group] = Field(default_factory=list, max_length=1000)


class WorkflowRegister(RequestModel):
    name: WorkflowName
    description: str | None = Field(default=None, max_length=4000)
    source: GitSource | FolderSource = Field(discriminator="kind")
    visibility: VisibilityIn | None = None


class WorkflowUpdate(RequestModel):
    description: str | None = Field(default=None, max_length=4000)
    visibility: VisibilityIn | None = None


class VersionOut(ORMModel):
    id: str
    number: int
    digest: str
    source: dict[str, Any]
    entry: str
    description: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    workflows: dict[str, Any]
    nodes: list[dict[str, Any]]
    registered_by: str | None
    created_at: datetime


class WorkflowOut(ORMModel):
    id: str
    name: str
    description: str | None
    owner_id: str
    visibility: Visibility
    allowed_users: list[str]
    allowed_groups: list[str]
    created_at: datetime
    updated_at: datetime
    latest_version: int | None = None


class WorkflowDetail(WorkflowOut):
    latest: VersionOut | None = None


class Registered(BaseModel):
    workflow: WorkflowOut
    version: VersionOut
    created: bool = Field(description="False when the same content was already registered.")
