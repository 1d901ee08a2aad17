"""Validated shapes of catalogue entries (their JSON Schema is published in the OpenAPI spec).

Every value a person types is checked here: identifiers and names against patterns, URLs by
scheme with no credentials and no ``..``, paths kept relative to their storage target, sizes and
checksums by form, free metadata by key pattern and total size. Unknown fields are refused, so a
typo in a field name is a 422 that names it rather than a silently dropped value.
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from hpcwaas.text import (
    ABSOLUTE_PATH,
    CHECKSUM,
    HOST,
    LOCATION_URL,
    MAX_INT,
    MULTI_LINE,
    NON_BLANK_LINE,
    NOT_WS,
    ONE_LINE,
    RELATIVE_PATH,
    published,
)

Access = Literal["public", "restricted"]
Protocol = Literal["sftp", "https", "file"]
SortKey = Literal["relevance", "modified", "created", "title", "size"]
SortOrder = Literal["asc", "desc"]

PROTOCOLS: tuple[str, ...] = ("sftp", "https", "file")
MAX_METADATA_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$")


def _single_line(value: str) -> str:
    value = value.strip()
    if _CONTROL.search(value):
        raise ValueError("must be one line without control characters")
    return value


def _multi_line(value: str) -> str:
    if _CONTROL_MULTILINE.search(value):
        raise ValueError("must not contain control characters")
    return value.strip()


def _clean_path(path: str, *, absolute: bool) -> str:
    """A POSIX path without '..', '.' or empty segments; absolute or relative as asked."""
    if _CONTROL.search(path):
        raise ValueError("path must not contain control characters")
    if absolute and not path.startswith("/"):
        raise ValueError("path must be absolute (start with '/')")
    if not absolute and path.startswith("/"):
        raise ValueError("path must be relative to the storage target's base path (no leading '/')")
    body = path.strip("/")
    if not body:
        if absolute:
            return "/"
        raise ValueError("path must not be empty")
    if any(s in ("", ".", "..") for s in body.split("/")):
        raise ValueError("path must not contain '..', '.' or empty segments")
    return ("/" if absolute else "") + body


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _host(value: str) -> str:
    value = value.strip()
    if not _HOST.match(value) or len(value) > 253:
        raise ValueError("must be a host or site name (letters, digits, '-' and '.')")
    return value.lower()


def _location_url(value: str) -> str:
    """A dataset URL: sftp://site/path, https://host/path or file:///path; no credentials."""
    value = value.strip()
    if _CONTROL.search(value) or " " in value:
        raise ValueError("URL must not contain spaces or control characters")
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in PROTOCOLS:
        raise ValueError("URL scheme must be sftp, https or file (e.g. sftp://site/path)")
    if "@" in parts.netloc:
        raise ValueError("URL must not carry a user name or password; credentials live elsewhere")
    if parts.fragment:
        raise ValueError("URL must not have a #fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file URLs have no host: file:///absolute/path")
    else:
        try:
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"URL has a malformed host or port: {exc}") from None
        if not host:
            raise ValueError(f"{scheme} URLs need a host: {scheme}://site/path")
        _host(host)
    if scheme != "https" and parts.query:
        raise ValueError("only https URLs may have a query")
    if not parts.path or parts.path == "/":
        raise ValueError("URL must name a path")
    path = _clean_path(parts.path, absolute=True)
    return f"{scheme}://{parts.netloc.lower()}{path}" + (f"?{parts.query}" if parts.query else "")


def _keyword(value: str) -> str:
    return " ".join(_non_blank(_single_line(value)).lower().split())


def _keywords(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        seen.setdefault(v, None)
    return list(seen)


def _metadata(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    if len(json.dumps(value, ensure_ascii=False)) > MAX_METADATA_BYTES:
        raise ValueError(f"free metadata is limited to {MAX_METADATA_BYTES // 1024} KiB of JSON")
    return value


# One line, trimmed (lengths count what was sent); blank or not.
Title = Annotated[str, StringConstraints(max_length=300), AfterValidator(_single_line), AfterValidator(_non_blank),
                  published(NON_BLANK_LINE)]
Name200 = Annotated[str, StringConstraints(max_length=200), AfterValidator(_single_line), AfterValidator(_non_blank),
                    published(NON_BLANK_LINE)]
Line64 = Annotated[str, StringConstraints(max_length=64), AfterValidator(_single_line), AfterValidator(_non_blank),
                   published(NON_BLANK_LINE)]
Optional200 = Annotated[str, StringConstraints(max_length=200), AfterValidator(_single_line), published(ONE_LINE)]
Description = Annotated[str, StringConstraints(max_length=20000), AfterValidator(_multi_line), published(MULTI_LINE)]
DatasetId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$"),
                      Field(description="A stable dataset identifier: 32 lower-case hex characters.")]
Username = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{1,63}$"),
                     Field(description="A user name of the gateway.")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$"),
                       Field(description="1-63 characters: lower-case letters, digits and '-'.")]
Host = Annotated[str, StringConstraints(max_length=253), AfterValidator(_host), published(HOST)]
Format = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+/_-]{0,99}$", to_lower=True),
                   Field(description="A format name or media type, e.g. netcdf or text/csv.")]
def _checksum(value: str) -> str:
    value = value.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("a SHA-256 checksum is 64 hexadecimal characters (optionally prefixed 'sha256:')")
    return value


Checksum = Annotated[str, StringConstraints(max_length=71), AfterValidator(_checksum), published(CHECKSUM),
                     Field(description="SHA-256 of the content, 64 hex characters.")]
License = Annotated[Name200, Field(description="An SPDX identifier (CC-BY-4.0) or a licence URL.")]
Keyword = Annotated[Line64, AfterValidator(_keyword),
                    Field(description="Compared without case; runs of spaces count as one.")]
Version = Line64
Doi = Annotated[str, StringConstraints(pattern=rf"^10\.[0-9]{{4,9}}/{NOT_WS}{{1,240}}$"),
                Field(description="A DOI without resolver, e.g. 10.5281/zenodo.123")]
Handle = Annotated[str, StringConstraints(pattern=rf"^[0-9]+(\.[0-9]+)*/{NOT_WS}{{1,240}}$"),
                   Field(description="A Handle, e.g. 21.T11148/abc")]
LocationUrl = Annotated[str, StringConstraints(max_length=2048), AfterValidator(_location_url), published(LOCATION_URL),
                        Field(description="sftp://site/path, https://host/path or file:///path")]
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=1024),
                         AfterValidator(lambda v: _clean_path(v, absolute=False)), published(RELATIVE_PATH),
                         Field(description="A path under the storage target's base path, e.g. runs/2024/x.nc")]
AbsolutePath = Annotated[str, StringConstraints(min_length=1, max_length=1024),
                         AfterValidator(lambda v: _clean_path(v, absolute=True)), published(ABSOLUTE_PATH)]
_METADATA_KEY = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
MetadataKey = Annotated[str, StringConstraints(pattern=_METADATA_KEY)]
# pydantic publishes a key rule as patternProperties, which lets other keys through: say so plainly.
Metadata = Annotated[dict[MetadataKey, JsonValue], Field(max_length=100, json_schema_extra={
    "propertyNames": {"pattern": _METADATA_KEY}, "additionalProperties": False}), AfterValidator(_metadata)]
Keywords = Annotated[list[Keyword], Field(max_length=30), AfterValidator(_keywords)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Creator(Strict):
    """A person or organisation that made the dataset."""

    name: Name200
    orcid: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{3}[0-9X]$")] | None = Field(
        default=None, description="ORCID iD, e.g. 0000-0002-1825-0097"
    )
    affiliation: Optional200 | None = None


def _given(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


# check_location's rules in JSON Schema (null counts as not given): a URL, or a storage target
# with a path, never both.
_LOCATION_RULES: dict[str, Any] = {"allOf": [
    {"not": {"allOf": [_given("location"), {"anyOf": [_given("storage_target"), _given("path")]}]}},
    {"anyOf": [{"allOf": [_given("storage_target"), _given("path")]},
               {"allOf": [{"not": _given("storage_target")}, {"not": _given("path")}]}]},
]}


class DatasetFields(Strict):
    """Fields shared by creation and import."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_LOCATION_RULES)

    title: Title
    description: Description = ""
    location: LocationUrl | None = Field(default=None, description="Where the data is, as a URL; or use "
                                         "storage_target and path; or leave all three empty for now.")
    storage_target: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="A storage target's id or name (with path)."
    )
    path: RelativePath | None = None
    format: Format | None = None
    size_bytes: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None
    checksum_sha256: Checksum | None = None
    license: License | None = None
    creators: Annotated[list[Creator], Field(max_length=50)] = []
    keywords: Keywords = []
    version: Version | None = None
    access: Access = Field(default="restricted", description="public: anyone may read it; restricted: its "
                           "owner, the listed readers and admins only.")
    readers: Annotated[list[Username], Field(max_length=200)] = []
    doi: Doi | None = None
    handle: Handle | None = None
    metadata: Metadata = {}

    @model_validator(mode="after")
    def _one_location(self) -> DatasetFields:
        check_location(self.location, self.storage_target, self.path)
        return self


def check_location(location: str | None, storage_target: str | None, path: str | None) -> None:
    """A dataset is located by a URL, or by a storage target and a path, or not yet at all."""
    if location is not None and (storage_target is not None or path is not None):
        raise ValueError("give either location (a URL) or storage_target and path, not both")
    if (storage_target is None) != (path is None):
        raise ValueError("storage_target and path go together")


class DatasetCreate(DatasetFields):
    """A new dataset. ``access`` defaults to restricted: publishing is a deliberate choice."""


class DatasetRecord(DatasetFields):
    """One line of a bulk import or export: a dataset with its stable id (new when absent)."""

    id: DatasetId | None = None


class DatasetUpdate(Strict):
    """A partial change. Absent fields are kept; ``null`` clears an optional field.

    The location is one unit: giving any of location, storage_target or path replaces all three.
    ``expected_revision`` makes the change conditional (409 when someone changed it meanwhile)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_LOCATION_RULES)

    title: Title | SkipJsonSchema[None] = None  # null is refused: a title cannot be cleared
    description: Description | None = None
    location: LocationUrl | None = None
    storage_target: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    path: RelativePath | None = None
    format: Format | None = None
    size_bytes: Annotated[int, Field(ge=0, le=MAX_INT)] | None = None
    checksum_sha256: Checksum | None = None
    license: License | None = None
    creators: Annotated[list[Creator], Field(max_length=50)] | None = None
    keywords: Keywords | None = None
    version: Version | None = None
    access: Access | SkipJsonSchema[None] = None
    readers: Annotated[list[Username], Field(max_length=200)] | None = None
    doi: Doi | None = None
    handle: Handle | None = None
    metadata: Metadata | None = None
    expected_revision: int | None = Field(default=None, ge=1, le=MAX_INT)

    @model_validator(mode="after")
    def _required_stay_set(self) -> DatasetUpdate:
        for name in ("title", "access"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be cleared")
        if {"location", "storage_target", "path"} & self.model_fields_set:
            check_location(self.location, self.storage_target, self.path)
        return self


class StorageTargetRef(BaseModel):
    id: str
    name: str


class DatasetOut(BaseModel):
    """A dataset as the API shows it. ``readers`` is shown to the owner and admins only."""

    id: str
    title: str
    description: str
    location: str | None
    storage_target: StorageTargetRef | None
    path: str | None
    protocol: Protocol | None
    site: str | None
    format: str | None
    size_bytes: int | None
    checksum_sha256: str | None
    license: str | None
    creators: list[Creator]
    keywords: list[str]
    version: str | None
    access: Access
    readers: list[str] | None
    doi: str | None
    handle: str | None
    metadata: dict[str, JsonValue]
    owner: str
    created_at: datetime
    modified_at: datetime
    revision: int


class Highlight(BaseModel):
    """Matches of a search, as HTML: the text is escaped and the matches wrapped in <mark>."""

    title_html: str
    snippet_html: str


class DatasetHit(DatasetOut):
    highlight: Highlight | None = None


class DatasetPage(BaseModel):
    items: list[DatasetHit]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last one.")


class DatasetFilters(Strict):
    """Query parameters of the listing and of the search."""

    q: Annotated[str, StringConstraints(max_length=500)] | None = Field(
        default=None, description="Words to find in title, description and keywords (all must match; "
                                  "prefixes match too). Punctuation and operators are ignored.")
    keyword: Annotated[list[Keyword], Field(max_length=10)] = Field(default=[], description="Has every keyword.")
    format: Format | None = None
    owner: Username | None = None
    access: Access | None = None
    site: Host | None = None
    protocol: Protocol | None = None
    sort: SortKey | None = Field(default=None, description="relevance when searching, else modified (relevance "
                                 "without search words is modified order).")
    order: SortOrder | None = Field(default=None, description="desc by default (asc for title).")
    limit: int = Field(default=50, ge=1, le=200)
    cursor: Annotated[str, StringConstraints(max_length=500)] | None = None


class SearchFilters(DatasetFilters):
    """Query parameters of the search: the words are required."""

    q: Annotated[str, StringConstraints(max_length=500)] = Field(
        description="Words to find in title, description and keywords (all must match; prefixes match too). "
                    "Punctuation and operators are ignored.")


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    revision: int
    action: str
    actor: str | None = Field(validation_alias="actor_name")
    at: datetime
    changes: list[str]
    snapshot: dict[str, Any]


class Resolved(BaseModel):
    """Where a dataset's bytes are, for a pipeline: protocol, site (or host) and absolute path."""

    dataset_id: str
    owner_id: str = Field(description="Who owns the dataset (a file location must lie in their storage).")
    protocol: Protocol
    site: str | None = Field(description="The site (sftp, storage target) or host (https); null for file.")
    path: str
    url: str
    storage_target: str | None = Field(description="The storage target's name, when located by one.")
    checksum_sha256: str | None
    size_bytes: int | None
    format: str | None
    revision: int


class ImportReport(BaseModel):
    created: int
    updated: int
    unchanged: int
    ids: list[str]


class StorageTargetCreate(Strict):
    name: TargetName
    site: Host = Field(description="The gateway site name (sftp) or host name (https); 'localhost' for file.")
    protocol: Protocol
    base_path: AbsolutePath
    description: Description | None = None


class StorageTargetUpdate(Strict):
    site: Host | None = None
    protocol: Protocol | None = None
    base_path: AbsolutePath | None = None
    description: Description | None = None


class StorageTargetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    site: str
    protocol: Protocol
    base_path: str
    description: str | None
    owner: str = Field(validation_alias="owner_name")
    created_at: datetime
    modified_at: datetime


def join_under(base_path: str, path: str) -> str:
    """``path`` under ``base_path``, refusing anything that would leave it."""
    joined = posixpath.normpath(posixpath.join(base_path, path))
    base = posixpath.normpath(base_path)
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"path {path!r} leaves the base path {base_path!r}")
    return joined
