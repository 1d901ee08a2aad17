"""The catalogue's use cases as plain functions over a SQLAlchemy session and a principal.

Who may do what:

- a public dataset is readable by anyone, a restricted one by its owner, its listed readers and
  admins; to anyone else it does not exist (404, not 403: ids leak nothing);
- writing needs a principal; only the owner or an admin may change or delete an entry; a reader
  who tries gets 403;
- storage targets are readable by anyone (they hold no secrets); any principal may register one,
  only its owner or an admin may change or delete it, and not while datasets use it.

Every change of a dataset appends a version row (who, when, which fields, the entry after it),
in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, insert, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalogue.errors import (
    Conflict,
    DatasetNotFound,
    ImportRejected,
    InvalidEntry,
    LoginRequired,
    NotAllowed,
    StorageTargetNotFound,
    Unresolvable,
)
from catalogue.models import Dataset, DatasetKeyword, DatasetReader, DatasetVersion, StorageTarget
from catalogue.schemas import (
    DatasetCreate,
    DatasetFields,
    DatasetHit,
    DatasetRecord,
    DatasetUpdate,
    Highlight,
    ImportReport,
    Resolved,
    StorageTargetCreate,
    StorageTargetRef,
    StorageTargetUpdate,
    join_under,
)
from hpcwaas.db import new_id, utcnow

log = logging.getLogger(__name__)

MAX_IMPORT_LINES = 100_000
_IMPORT_BATCH = 1000
_LOCATION_FIELDS = ("location", "storage_target", "path")
# Fields copied as they are between the schemas and the table (renamed ones are handled apart).
_PLAIN_FIELDS = ("title", "description", "format", "size_bytes", "checksum_sha256", "license", "version",
                 "access", "doi", "handle")


@dataclass(frozen=True)
class Principal:
    """Who is asking: the host application authenticates and hands this in."""

    user_id: str
    username: str
    is_admin: bool = False


# --- reading and permissions -------------------------------------------------------------------

def can_read(dataset: Dataset, who: Principal | None) -> bool:
    if dataset.access == "public":
        return True
    if who is None:
        return False
    return who.is_admin or dataset.owner_id == who.user_id or who.username in dataset.readers


def can_write(owner_id: str, who: Principal | None) -> bool:
    return who is not None and (who.is_admin or owner_id == who.user_id)


def _require_login(who: Principal | None) -> Principal:
    if who is None:
        raise LoginRequired("this needs an API token", hint="send 'Authorization: Bearer <token>'")
    return who


def _not_found(dataset_id: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"dataset {dataset_id!r} does not exist or you may not read it",
        hint="restricted datasets are visible to their owner, their listed readers and admins",
        dataset_id=dataset_id,
    )


def get_dataset(db: Session, who: Principal | None, dataset_id: str) -> Dataset:
    """A dataset the caller may read."""
    dataset = db.scalars(select(Dataset).where(Dataset.id == dataset_id)).first()
    if dataset is None or not can_read(dataset, who):
        raise _not_found(dataset_id)
    return dataset


def _writable(db: Session, who: Principal | None, dataset_id: str) -> tuple[Principal, Dataset]:
    who = _require_login(who)
    dataset = get_dataset(db, who, dataset_id)
    if not can_write(dataset.owner_id, who):
        raise NotAllowed(
            f"only the owner ({dataset.owner_name}) or an admin may change dataset {dataset_id!r}",
            dataset_id=dataset_id,
        )
    return who, dataset


def visible(who: Principal | None) -> ColumnElement[bool]:
    """The condition selecting the datasets the caller may read."""
    if who is None:
        return Dataset.access == "public"
    if who.is_admin:
        return true()
    # Uncorrelated: the caller's grants are read once, not probed row by row.
    listed = Dataset.pk.in_(select(DatasetReader.dataset_pk).where(DatasetReader.username == who.username))
    return or_(Dataset.access == "public", Dataset.owner_id == who.user_id, listed)


# --- shapes ------------------------------------------------------------------------------------

def shown_location(dataset_id: str, owner_id: str, protocol: str | None, location: str | None, path: str | None,
                   who: Principal | None) -> tuple[str | None, str | None]:
    """The location and path a caller is shown. A file on the gateway's host is its owner's (and
    an admin's) business: others, anonymous visitors too, see the reference the pipelines take
    (``dataset:<id>``), never a path of the gateway's host."""
    if protocol == "file" and not can_write(owner_id, who):
        return f"dataset:{dataset_id}", None
    return location, path


def to_out(dataset: Dataset, who: Principal | None, hit: Highlight | None = None, *,
           with_readers: bool = True) -> DatasetHit:
    """The API view of a dataset; readers are shown to those who may change it (and not in listings)."""
    target = dataset.storage_target if dataset.storage_target_id else None
    location, path = shown_location(dataset.id, dataset.owner_id, dataset.protocol, dataset.location_url,
                                    dataset.location_path, who)
    return DatasetHit(
        id=dataset.id,
        title=dataset.title,
        description=dataset.description,
        location=location,
        storage_target=StorageTargetRef(id=target.id, name=target.name) if target else None,
        path=path,
        protocol=dataset.protocol,
        site=dataset.site,
        format=dataset.format,
        size_bytes=dataset.size_bytes,
        checksum_sha256=dataset.checksum_sha256,
        license=dataset.license,
        creators=dataset.creators,
        keywords=dataset.keywords,
        version=dataset.version,
        access=dataset.access,
        readers=dataset.readers if with_readers and can_write(dataset.owner_id, who) else None,
        doi=dataset.doi,
        handle=dataset.handle,
        metadata=dataset.extra_metadata,
        owner=dataset.owner_name,
        created_at=dataset.created_at,
        modified_at=dataset.modified_at,
        revision=dataset.revision,
        highlight=hit,
    )


def record_of(dataset: Dataset) -> dict[str, Any]:
    """The importable form of a dataset (a line of the JSON-lines export)."""
    target = dataset.storage_target
    record = {
        "id": dataset.id,
        **{name: getattr(dataset, name) for name in _PLAIN_FIELDS},
        "location": dataset.location_url,
        "storage_target": target.name if target else None,
        "path": dataset.location_path,
        "creators": dataset.creators,
        "keywords": dataset.keywords,
        "readers": dataset.readers,
        "metadata": dataset.extra_metadata,
    }
    return {k: v for k, v in record.items() if v not in (None, [], {}, "")}


# --- writing -----------------------------------------------------------------------------------

def _target(db: Session, ref: str) -> StorageTarget:
    target = db.scalars(select(StorageTarget).where(or_(StorageTarget.id == ref, StorageTarget.name == ref))).first()
    if target is None:
        raise StorageTargetNotFound(f"storage target {ref!r} does not exist", storage_target=ref,
                                    hint="list them: GET /catalogue/storage-targets")
    return target


def _located(db: Session, location: str | None, target_ref: str | None, path: str | None,
             targets: dict[str, StorageTarget] | None = None) -> dict[str, Any]:
    """The location columns for a URL, a storage target + path, or nothing."""
    if location is not None:
        parts = urlsplit(location)
        site = None if parts.scheme == "file" else parts.hostname
        return {"location_url": location, "storage_target_id": None, "location_path": None,
                "protocol": parts.scheme, "site": site}
    if target_ref is not None and path is not None:
        target = (targets or {}).get(target_ref) or _target(db, target_ref)
        try:
            join_under(target.base_path, path)
        except ValueError as exc:
            raise InvalidEntry(str(exc), field="path") from None
        return {"location_url": None, "storage_target_id": target.id, "location_path": path,
                "protocol": target.protocol, "site": None if target.protocol == "file" else target.site}
    return {"location_url": None, "storage_target_id": None, "location_path": None, "protocol": None, "site": None}


def _columns(db: Session, data: DatasetFields, targets: dict[str, StorageTarget] | None = None) -> dict[str, Any]:
    return {
        **{name: getattr(data, name) for name in _PLAIN_FIELDS},
        **_located(db, data.location, data.storage_target, data.path, targets),
        "creators": [c.model_dump(exclude_none=True) for c in data.creators],
        "keywords": list(data.keywords),
        "extra_metadata": dict(data.metadata),
    }


def _version(dataset: Dataset, who: Principal | None, action: str, changes: list[str]) -> DatasetVersion:
    return DatasetVersion(
        dataset_id=dataset.id, revision=dataset.revision, action=action, actor_id=who.user_id if who else None,
        actor_name=who.username if who else None, at=dataset.modified_at, changes=changes,
        snapshot={**record_of(dataset), "owner": dataset.owner_name},
    )


def create_dataset(db: Session, who: Principal | None, data: DatasetCreate, dataset_id: str | None = None) -> Dataset:
    """Register a dataset owned by the caller."""
    who = _require_login(who)
    now = utcnow()
    dataset = Dataset(id=dataset_id or new_id(), owner_id=who.user_id, owner_name=who.username, created_at=now,
                      modified_at=now, revision=1, **_columns(db, data))
    dataset.storage_target = db.get(StorageTarget, dataset.storage_target_id) if dataset.storage_target_id else None
    _set_keywords(dataset, data.keywords)
    _set_readers(dataset, data.readers)
    db.add(dataset)
    try:
        db.flush()
        db.add(_version(dataset, who, "created", sorted(data.model_fields_set)))
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise Conflict(f"dataset {dataset.id!r} already exists", field="id") from exc
    log.info("dataset %s created by %s", dataset.id, who.username)
    return dataset


def _set_keywords(dataset: Dataset, keywords: list[str]) -> None:
    # Keep the rows that stay: replacing them would delete and insert the same keys.
    have = {r.keyword: r for r in dataset.keyword_rows}
    dataset.keywords = list(keywords)
    dataset.keyword_rows = [have.get(k) or DatasetKeyword(keyword=k) for k in keywords]
    _copy_sort_keys(dataset)


def _copy_sort_keys(dataset: Dataset) -> None:
    """Keyword rows carry their dataset's sort keys (for keyword listings): keep them equal."""
    for row in dataset.keyword_rows:
        if (row.title, row.created_at, row.modified_at) != (dataset.title, dataset.created_at, dataset.modified_at):
            row.title, row.created_at, row.modified_at = dataset.title, dataset.created_at, dataset.modified_at


def _set_readers(dataset: Dataset, readers: list[str]) -> None:
    have = {r.username: r for r in dataset.reader_rows}
    dataset.reader_rows = [have.get(u) or DatasetReader(username=u) for u in dict.fromkeys(readers)]


def update_dataset(db: Session, who: Principal | None, dataset_id: str, data: DatasetUpdate, *,
                   commit: bool = True) -> Dataset:
    """Change some fields of a dataset (owner or admin); records a version when anything changed."""
    who, dataset = _writable(db, who, dataset_id)
    if data.expected_revision is not None and data.expected_revision != dataset.revision:
        raise Conflict(
            f"dataset {dataset_id!r} is at revision {dataset.revision}, not {data.expected_revision}",
            hint="someone changed it meanwhile: reload it and apply your change again",
            revision=dataset.revision,
        )
    given = data.model_fields_set - {"expected_revision"}
    before = record_of(dataset)
    for name in given & set(_PLAIN_FIELDS):
        setattr(dataset, name, getattr(data, name))
    if given & set(_LOCATION_FIELDS):
        for column, value in _located(db, data.location, data.storage_target, data.path).items():
            setattr(dataset, column, value)
        target_id = dataset.storage_target_id
        dataset.storage_target = db.get(StorageTarget, target_id) if target_id else None
    if "creators" in given:
        dataset.creators = [c.model_dump(exclude_none=True) for c in data.creators or []]
    if "keywords" in given:
        _set_keywords(dataset, data.keywords or [])
    if "readers" in given:
        _set_readers(dataset, data.readers or [])
    if "metadata" in given:
        dataset.extra_metadata = dict(data.metadata or {})
    after = record_of(dataset)
    changes = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if not changes:
        return dataset
    dataset.revision += 1
    dataset.modified_at = utcnow()
    _copy_sort_keys(dataset)
    db.add(_version(dataset, who, "updated", changes))
    if commit:
        _commit_change(db, dataset_id)
    return dataset


def _commit_change(db: Session, dataset_id: str) -> None:
    try:
        db.commit()
    except IntegrityError as exc:  # another change took the same revision number first
        db.rollback()
        raise Conflict(f"dataset {dataset_id!r} was changed by someone else at the same time",
                       hint="reload it and apply your change again") from exc


def delete_dataset(db: Session, who: Principal | None, dataset_id: str) -> None:
    """Delete a dataset (owner or admin); its history stays, ending with the deletion."""
    who, dataset = _writable(db, who, dataset_id)
    dataset.revision += 1
    dataset.modified_at = utcnow()
    db.add(_version(dataset, who, "deleted", []))
    db.delete(dataset)
    db.commit()


def history(db: Session, who: Principal | None, dataset_id: str) -> list[DatasetVersion]:
    """The versions of a dataset, newest first. Admins may read the history of a deleted one."""
    if who is not None and who.is_admin:
        versions = list(db.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
                                   .order_by(DatasetVersion.revision.desc())))
        if versions:
            return versions
    get_dataset(db, who, dataset_id)
    return list(db.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
                           .order_by(DatasetVersion.revision.desc())))


# --- resolution for pipelines -------------------------------------------------------------------

def resolve(db: Session, who: Principal | None, dataset_id: str) -> Resolved:
    """Where a dataset's bytes are: protocol, site and absolute path, with checksum and size.

    The caller must be allowed to read it. A dataset without a location is an error: no default
    location is ever guessed."""
    dataset = get_dataset(db, who, dataset_id)
    common = {"dataset_id": dataset.id, "owner_id": dataset.owner_id, "checksum_sha256": dataset.checksum_sha256,
              "size_bytes": dataset.size_bytes,
              "format": dataset.format, "revision": dataset.revision}
    if dataset.location_url is not None:
        parts = urlsplit(dataset.location_url)
        return Resolved(protocol=parts.scheme, site=dataset.site, path=parts.path,
                        url=dataset.location_url, storage_target=None, **common)
    target = dataset.storage_target
    if target is not None and dataset.location_path is not None:
        path = join_under(target.base_path, dataset.location_path)
        host = "" if target.protocol == "file" else target.site
        return Resolved(protocol=target.protocol, site=dataset.site, path=path,
                        url=f"{target.protocol}://{host}{path}", storage_target=target.name, **common)
    raise Unresolvable(
        f"dataset {dataset_id!r} has no location to stage it from",
        hint="its owner can set one: a location URL, or a storage target and a path",
        dataset_id=dataset_id,
    )


# --- bulk import -------------------------------------------------------------------------------

def _parse_lines(lines: Iterable[str | bytes]) -> tuple[list[tuple[int, DatasetRecord]], list[dict[str, Any]]]:
    records: list[tuple[int, DatasetRecord]] = []
    problems: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        if number > MAX_IMPORT_LINES:
            problems.append({"line": number, "field": "", "message": f"more than {MAX_IMPORT_LINES} lines"})
            break
        try:
            records.append((number, DatasetRecord.model_validate_json(line)))
        except ValidationError as exc:
            for e in exc.errors()[:5]:
                problems.append({"line": number, "field": ".".join(str(p) for p in e.get("loc", ())),
                                 "message": e.get("msg", "")})
        if len(problems) >= 100:
            break
    return records, problems


def import_records(db: Session, who: Principal | None, lines: Iterable[str | bytes]) -> ImportReport:
    """Create or update datasets from JSON lines (the export's format), all or nothing.

    A line with an id updates that dataset when the caller may change it, else creates it with
    that id. Any bad line rejects the whole import with every problem listed (line and field)."""
    who = _require_login(who)
    records, problems = _parse_lines(lines)
    ids = [r.id for _, r in records if r.id]
    existing: dict[str, Dataset] = {}
    for start in range(0, len(ids), _IMPORT_BATCH):
        chunk = ids[start:start + _IMPORT_BATCH]
        existing.update({d.id: d for d in db.scalars(select(Dataset).where(Dataset.id.in_(chunk))).unique()})
    target_refs = {r.storage_target for _, r in records if r.storage_target}
    targets: dict[str, StorageTarget] = {}
    for ref in target_refs:
        found = db.scalars(select(StorageTarget).where(or_(StorageTarget.id == ref, StorageTarget.name == ref))).first()
        if found is not None:
            targets[ref] = found
    seen: set[str] = set()
    for number, record in records:
        if record.id and record.id in seen:
            problems.append({"line": number, "field": "id", "message": f"id {record.id} appears twice"})
        if record.id:
            seen.add(record.id)
        current = existing.get(record.id or "")
        if current is not None and not can_write(current.owner_id, who):
            problems.append({"line": number, "field": "id",
                             "message": f"dataset {record.id} exists and only its owner or an admin may change it"})
        if record.storage_target and record.storage_target not in targets:
            problems.append({"line": number, "field": "storage_target",
                             "message": f"storage target {record.storage_target!r} does not exist"})
        elif record.storage_target and record.path:
            try:
                join_under(targets[record.storage_target].base_path, record.path)
            except ValueError as exc:
                problems.append({"line": number, "field": "path", "message": str(exc)})
    if problems:
        first = problems[0]
        raise ImportRejected(
            f"{len(problems)} problem(s) in the import, first on line {first['line']}"
            + (f" ({first['field']})" if first["field"] else "") + f": {first['message']}; nothing was imported",
            hint="fix the lines listed in details and send the whole file again",
            lines=problems,
        )
    created = updated = unchanged = 0
    out_ids: list[str] = []
    now = utcnow()
    new_rows: list[dict[str, Any]] = []
    new_records: list[DatasetRecord] = []
    for _, record in records:
        current = existing.get(record.id or "")
        if current is None:
            new_rows.append({"id": record.id or new_id(), "owner_id": who.user_id, "owner_name": who.username,
                             "created_at": now, "modified_at": now, "revision": 1,
                             **_columns(db, record, targets)})
            new_records.append(record)
            out_ids.append(new_rows[-1]["id"])
            continue
        out_ids.append(current.id)
        # A line replaces the entry: what it leaves out is cleared.
        change = DatasetUpdate.model_validate(record.model_dump(exclude={"id"}))
        before = current.revision
        update_dataset(db, who, current.id, change, commit=False)
        if current.revision == before:
            unchanged += 1
        else:
            updated += 1
    created = _insert_many(db, who, new_rows, new_records)
    db.commit()
    log.info("import by %s: %d created, %d updated, %d unchanged", who.username, created, updated, unchanged)
    return ImportReport(created=created, updated=updated, unchanged=unchanged, ids=out_ids)


def _insert_many(db: Session, who: Principal, rows: list[dict[str, Any]], records: list[DatasetRecord]) -> int:
    """Insert new datasets with core statements in batches (fast enough for 100,000 lines)."""
    for start in range(0, len(rows), _IMPORT_BATCH):
        chunk = rows[start:start + _IMPORT_BATCH]
        chunk_records = records[start:start + _IMPORT_BATCH]
        db.execute(insert(Dataset), chunk)
        found = db.execute(select(Dataset.id, Dataset.pk).where(Dataset.id.in_([r["id"] for r in chunk])))
        pks: dict[str, int] = {row[0]: row[1] for row in found}
        keywords = [{"dataset_pk": pks[r["id"]], "keyword": k, "title": r["title"], "created_at": r["created_at"],
                     "modified_at": r["modified_at"]} for r in chunk for k in r["keywords"]]
        readers = [{"dataset_pk": pks[r["id"]], "username": u} for r, rec in zip(chunk, chunk_records, strict=True)
                   for u in dict.fromkeys(rec.readers)]
        if keywords:
            db.execute(insert(DatasetKeyword), keywords)
        if readers:
            db.execute(insert(DatasetReader), readers)
        versions = []
        for r, rec in zip(chunk, chunk_records, strict=True):
            snapshot = {k: v for k, v in {**rec.model_dump(mode="json", exclude_none=True), "id": r["id"]}.items()
                        if v not in ([], {}, "")}
            versions.append({"dataset_id": r["id"], "revision": 1, "action": "created", "actor_id": who.user_id,
                             "actor_name": who.username, "at": r["created_at"], "changes": ["imported"],
                             "snapshot": {**snapshot, "owner": who.username}})
        db.execute(insert(DatasetVersion), versions)
    return len(rows)


# --- storage targets ---------------------------------------------------------------------------

def list_targets(db: Session) -> list[StorageTarget]:
    return list(db.scalars(select(StorageTarget).order_by(StorageTarget.name)))


def get_target(db: Session, ref: str) -> StorageTarget:
    target = db.scalars(select(StorageTarget).where(or_(StorageTarget.id == ref, StorageTarget.name == ref))).first()
    if target is None:
        raise StorageTargetNotFound(f"storage target {ref!r} does not exist", storage_target=ref)
    return target


def create_target(db: Session, who: Principal | None, data: StorageTargetCreate) -> StorageTarget:
    who = _require_login(who)
    if db.scalars(select(StorageTarget).where(StorageTarget.name == data.name)).first() is not None:
        raise Conflict(f"storage target {data.name!r} already exists", field="name")
    now = utcnow()
    target = StorageTarget(**data.model_dump(), owner_id=who.user_id, owner_name=who.username, created_at=now,
                           modified_at=now)
    db.add(target)
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise Conflict(f"storage target {data.name!r} already exists", field="name") from exc
    return target


def _writable_target(db: Session, who: Principal | None, ref: str) -> StorageTarget:
    who = _require_login(who)
    target = get_target(db, ref)
    if not can_write(target.owner_id, who):
        raise NotAllowed(f"only the owner ({target.owner_name}) or an admin may change storage target {ref!r}")
    return target


def _in_use(db: Session, target: StorageTarget) -> int:
    return int(db.scalar(select(func.count()).select_from(Dataset).where(Dataset.storage_target_id == target.id))
               or 0)


def update_target(db: Session, who: Principal | None, ref: str, data: StorageTargetUpdate) -> StorageTarget:
    """Change a storage target; the site, protocol and base path are fixed while datasets use it
    (changing them would silently move those datasets)."""
    target = _writable_target(db, who, ref)
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if getattr(target, k) != v}
    moving = {"site", "protocol", "base_path"} & set(changes)
    if moving and (used := _in_use(db, target)):
        raise Conflict(f"{used} dataset(s) are located on {target.name!r}; its {', '.join(sorted(moving))} "
                       "cannot change", hint="register a new storage target and move the datasets to it")
    for name, value in changes.items():
        if name != "description" and value is None:
            raise InvalidEntry(f"{name} cannot be cleared", field=name)
        setattr(target, name, value)
    if changes:
        target.modified_at = utcnow()
    db.commit()
    return target


def delete_target(db: Session, who: Principal | None, ref: str) -> None:
    target = _writable_target(db, who, ref)
    if used := _in_use(db, target):
        raise Conflict(f"{used} dataset(s) are located on storage target {target.name!r}",
                       hint="move or delete them first")
    db.delete(target)
    try:
        db.commit()
    except IntegrityError:  # a table outside the catalogue refers to it: the gateway's mirrors
        db.rollback()
        raise Conflict(f"storage target {target.name!r} is still in use: a mirror keeps it in sync with a site",
                       hint="delete its mirrors first (GET /catalogue/mirrors)") from None


__all__ = [
    "Principal", "can_read", "can_write", "create_dataset", "create_target", "delete_dataset", "delete_target",
    "get_dataset", "get_target", "history", "import_records",
    "list_targets", "record_of", "resolve", "to_out", "update_dataset", "update_target", "visible",
]
