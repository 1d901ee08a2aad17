"""Shared field types and the error body every endpoint uses."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Username = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{1,63}$"),
    Field(description="2-64 characters: lower-case letters, digits, '_', '.', '-'; starts with a letter."),
]
SiteName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$"),
    Field(description="1-63 characters: lower-case letters, digits and '-'; starts with a letter."),
]
Login = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$"),
    Field(description="A POSIX user name on the site."),
]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.@:-]{0,99}$")]
#: The largest integer a parameter may carry: the databases' 64-bit integers (beyond it SQLite
#: overflowed into a 500).
MAX_INT = 2**63 - 1


class RequestModel(BaseModel):
    """A request body: a field it does not know is refused (422 naming it), never ignored."""

    model_config = ConfigDict(extra="forbid")


class ORMModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorInfo(BaseModel):
    code: str = Field(description="A stable machine-readable code, e.g. not_found.")
    message: str = Field(description="What went wrong, for a person.")
    hint: str | None = Field(default=None, description="What to do next.")
    details: dict[str, Any] | list[Any] | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    """The one error shape of the whole API."""

    error: ErrorInfo
