"""Listing and full-text search of the datasets a caller may see: filters, sorts, keyset cursors."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from catalogue import search
from catalogue.errors import (
    InvalidQuery,
)
from catalogue.models import Dataset, DatasetKeyword, StorageTarget
from catalogue.schemas import (
    DatasetFilters,
    DatasetHit,
    DatasetPage,
    Highlight,
    StorageTargetRef,
)
from catalogue.service import Principal, shown_location, visible

log = logging.getLogger(__name__)

_SORT_COLUMNS: dict[str, Any] = {
    "modified": Dataset.modified_at,
    "created": Dataset.created_at,
    "title": Dataset.title,
    "size": func.coalesce(Dataset.size_bytes, -1),
}


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, order: str) -> dict[str, Any]:
    bad = InvalidQuery("the cursor is not one this listing gave out", hint="start again without ?cursor=",
                       field="cursor")
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if not isinstance(payload, dict) or payload.get("s") != sort or payload.get("o") != order:
        raise bad
    return payload


def _filtered(stmt: Select[Any], who: Principal | None, f: DatasetFilters, *,
              skip_keyword: str | None = None) -> Select[Any]:
    """The visibility and filter conditions (``skip_keyword``: one the statement already walks)."""
    stmt = stmt.where(visible(who))
    for keyword in dict.fromkeys(f.keyword):
        if keyword == skip_keyword:
            continue
        stmt = stmt.where(Dataset.pk.in_(select(DatasetKeyword.dataset_pk).where(DatasetKeyword.keyword == keyword)))
    for column, value in ((Dataset.format, f.format), (Dataset.owner_name, f.owner), (Dataset.access, f.access),
                          (Dataset.site, f.site), (Dataset.protocol, f.protocol)):
        if value is not None:
            stmt = stmt.where(column == value)
    return stmt


# A relevance-sorted search on SQLite first joins only this many best matches per row it needs
# (more when filters beyond visibility may drop many), then widens the window by _WIDEN, then
# takes every match.
_WINDOW_PER_ROW, _WINDOW_PER_ROW_FILTERED, _WINDOW_MIN, _WIDEN = 4, 24, 64, 16
# Sorts whose keys the keyword rows carry, in keyword listings.
_KEYWORD_SORT_COLUMNS: dict[str, Any] = {
    "modified": DatasetKeyword.modified_at, "created": DatasetKeyword.created_at, "title": DatasetKeyword.title,
}


def _has_column_filters(f: DatasetFilters) -> bool:
    return bool(f.keyword) or any(v is not None for v in (f.format, f.owner, f.access, f.site, f.protocol))


def _page_statement(dialect: str, who: Principal | None, f: DatasetFilters, terms: list[str] | None, sort: str,
                    order: str, cursor: dict[str, Any] | None, offset: int, *, window: int | None = None,
                    walk_keyword: str | None = None) -> Select[Any]:
    """The statement selecting the page's row keys (limit + 1 of them, to know whether more follow).

    ``walk_keyword``: start from that keyword's rows, in the sort's order (they carry the sort
    keys), reading each one's dataset for the other conditions until the page is full."""
    stmt = select(Dataset.pk)
    match = None
    sort_column: Any = _SORT_COLUMNS.get(sort)
    pk_column: Any = Dataset.pk
    if walk_keyword is not None:
        sort_column, pk_column = _KEYWORD_SORT_COLUMNS[sort], DatasetKeyword.dataset_pk
        # "+ 0": the dataset is found from its keyword row, never the other way (SQLite would
        # otherwise start from another keyword's datasets and sort them all).
        stmt = (select(DatasetKeyword.dataset_pk)
                .join(Dataset, Dataset.pk == DatasetKeyword.dataset_pk + 0)
                .where(DatasetKeyword.keyword == walk_keyword))
    if terms:
        match = search.match(dialect, terms, window)
        if match.source is not None:
            stmt = stmt.select_from(match.source).join(Dataset, Dataset.pk == match.source.c.pk)
        if match.condition is not None:
            stmt = stmt.where(match.condition)
    stmt = _filtered(stmt, who, f, skip_keyword=walk_keyword)
    if sort == "relevance":
        assert match is not None
        rank = match.rank if order == "asc" else -match.rank
        stmt = stmt.order_by(rank, Dataset.pk).offset(offset)
    else:
        key = sort_column
        if cursor is not None:
            value = cursor.get("v")
            if sort in ("modified", "created"):
                try:
                    value = datetime.fromisoformat(str(value))
                except ValueError:
                    raise InvalidQuery("the cursor is damaged", field="cursor") from None
            pk = int(cursor.get("k", 0))
            after = key > value if order == "asc" else key < value
            pk_after = pk_column > pk if order == "asc" else pk_column < pk
            stmt = stmt.where(or_(after, and_(key == value, pk_after)))
        stmt = stmt.order_by(key.asc() if order == "asc" else key.desc(),
                             pk_column.asc() if order == "asc" else pk_column.desc())
    return stmt.limit(f.limit + 1)


def _ranked_keys_sqlite(db: Session, who: Principal | None, f: DatasetFilters, terms: list[str],
                        offset: int) -> list[int]:
    """The page's keys of a relevance-sorted search on SQLite, through a widening window of best matches.

    The window is a prefix of the matches in (score, rowid) order, so when the filtered window
    still holds the rows up to the page's end, they are exactly those of the query over every
    match; otherwise the window widens (each try scores the matches again, so the first one is
    generous), and when it held every match the page is simply the last one."""
    per_row = _WINDOW_PER_ROW_FILTERED if _has_column_filters(f) else _WINDOW_PER_ROW
    window: int | None = max(_WINDOW_MIN, (offset + f.limit + 1) * per_row)
    while True:
        stmt = _page_statement("sqlite", who, f, terms, "relevance", "asc", None, offset, window=window)
        keys = list(db.scalars(stmt))
        if len(keys) > f.limit or window is None:
            return keys
        if search.count_up_to(db, terms, window + 1) <= window:  # the window held every match
            return keys
        window = window * _WIDEN if window * _WIDEN < 200_000 else None


def _keyword_to_walk(db: Session, f: DatasetFilters, sort: str) -> str | None:
    """The keyword whose rows a listing starts from, in the sort's order: the rarest one asked for
    (each costs a count on its index when there are several), for the sorts the rows carry."""
    keywords = list(dict.fromkeys(f.keyword))
    if sort not in _KEYWORD_SORT_COLUMNS or not keywords:
        return None
    if len(keywords) == 1:
        return keywords[0]
    counts = {k: int(db.scalar(select(func.count()).select_from(DatasetKeyword)
                               .where(DatasetKeyword.keyword == k)) or 0) for k in keywords}
    return min(keywords, key=lambda k: counts[k])


# A page's rows: the columns a listing shows (readers are not shown in listings) and the
# storage target's name, as plain rows (no ORM objects: a listing only reads them). Built once;
# the page's keys are one expanding parameter.
_PAGE_ROWS = (
    select(Dataset.pk, Dataset.id, Dataset.title, Dataset.description, Dataset.location_url,
           Dataset.storage_target_id, StorageTarget.name, Dataset.location_path, Dataset.protocol, Dataset.site,
           Dataset.format, Dataset.size_bytes, Dataset.checksum_sha256, Dataset.license, Dataset.creators,
           Dataset.keywords, Dataset.version, Dataset.access, Dataset.doi, Dataset.handle, Dataset.extra_metadata,
           Dataset.owner_name, Dataset.created_at, Dataset.modified_at, Dataset.revision, Dataset.owner_id)
    .outerjoin(StorageTarget, StorageTarget.id == Dataset.storage_target_id)
    .where(Dataset.pk.in_(bindparam("page_keys", expanding=True)))
)


def _hit_of(row: Any, hit: Highlight | None, who: Principal | None) -> DatasetHit:
    """A listing's item from a row of _PAGE_ROWS (what to_out gives with_readers=False)."""
    (_pk, id_, title, description, location, target_id, target_name, path, protocol, site, format_, size,
     checksum, license_, creators, keywords, version, access, doi, handle, metadata, owner, created_at,
     modified_at, revision, owner_id) = row
    location, path = shown_location(id_, owner_id, protocol, location, path, who)
    return DatasetHit(
        id=id_, title=title, description=description, location=location,
        storage_target=StorageTargetRef(id=target_id, name=target_name) if target_id else None,
        path=path, protocol=protocol, site=site, format=format_, size_bytes=size, checksum_sha256=checksum,
        license=license_, creators=creators, keywords=keywords, version=version, access=access, readers=None,
        doi=doi, handle=handle, metadata=metadata, owner=owner, created_at=created_at, modified_at=modified_at,
        revision=revision, highlight=hit,
    )


# SQLite: listings read rows scattered over the whole datasets table and the search index; with
# the default 2 MB page cache each read is a system call into the OS cache. Memory-mapping the
# file (shared by every connection, unlike a larger page cache) halved the row-reading part of
# listings and searches at 100,000 datasets. Set once per connection, on its first listing.
def list_datasets(db: Session, who: Principal | None, f: DatasetFilters) -> DatasetPage:
    """One page of the datasets the caller may read, filtered, searched and sorted.

    Pages are cut with keyset cursors (sort value, row key), so deep pages cost what the first
    does; relevance-sorted search pages carry an offset instead."""
    terms = search.terms_of(f.q) if f.q is not None else None
    sort = f.sort or ("relevance" if terms else "modified")
    if sort == "relevance" and not terms:
        sort = "modified"  # without words every dataset is as relevant: newest first (documented)
    order = f.order or ("asc" if sort in ("title", "relevance") else "desc")
    dialect = db.get_bind().dialect.name
    cursor = _decode_cursor(f.cursor, sort, order) if f.cursor else None
    offset = 0
    if sort == "relevance":
        offset = int(cursor.get("n", 0)) if cursor else 0
        if offset < 0 or offset > 10_000:
            raise InvalidQuery("search results go 10,000 deep at most", field="cursor", hint="refine the search")
    # Two steps: the page's row keys first (the sorter carries keys, not whole rows), then the rows.
    if terms and sort == "relevance" and order == "asc" and dialect == "sqlite":
        pks = _ranked_keys_sqlite(db, who, f, terms, offset)
    else:
        # Measured on SQLite; PostgreSQL's planner keeps choosing its own plan.
        walk = None if terms or dialect != "sqlite" else _keyword_to_walk(db, f, sort)
        pks = list(db.scalars(_page_statement(dialect, who, f, terms, sort, order, cursor, offset,
                                              walk_keyword=walk)))
    more = len(pks) > f.limit
    pks = pks[: f.limit]
    loaded = {row[0]: row for row in db.execute(_PAGE_ROWS, {"page_keys": pks})} if pks else {}
    page = [loaded[pk] for pk in pks]
    next_cursor = None
    if more and page:
        last = page[-1]
        if sort == "relevance":
            next_cursor = _encode_cursor({"s": sort, "o": order, "n": offset + len(page)})
        else:
            value = {"modified": last.modified_at, "created": last.created_at, "title": last.title,
                     "size": last.size_bytes if last.size_bytes is not None else -1}[sort]
            encoded = value.isoformat() if isinstance(value, datetime) else value
            next_cursor = _encode_cursor({"s": sort, "o": order, "v": encoded, "k": last.pk})
    items = []
    pattern = search.pattern(terms) if terms else None
    for row in page:
        hit = None
        if pattern is not None:
            hit = Highlight(title_html=search.highlight(row.title, pattern),
                            snippet_html=search.snippet(row.description or ", ".join(row.keywords), pattern))
        items.append(_hit_of(row, hit, who))
    return DatasetPage(items=items, next_cursor=next_cursor)


def facets(db: Session, who: Principal | None, limit: int = 30) -> dict[str, list[tuple[str, int]]]:
    """The commonest formats, sites and keywords among the datasets the caller may read."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name, column in (("format", Dataset.format), ("site", Dataset.site)):
        rows = db.execute(select(column, func.count()).where(visible(who), column.is_not(None))
                          .group_by(column).order_by(func.count().desc(), column).limit(limit))
        out[name] = [(str(v), int(n)) for v, n in rows]
    rows = db.execute(select(DatasetKeyword.keyword, func.count())
                      .join(Dataset, Dataset.pk == DatasetKeyword.dataset_pk)
                      .where(visible(who)).group_by(DatasetKeyword.keyword)
                      .order_by(func.count().desc(), DatasetKeyword.keyword).limit(limit))
    out["keyword"] = [(str(v), int(n)) for v, n in rows]
    return out


def iter_visible(db: Session, who: Principal | None, batch: int = 500) -> Iterator[Dataset]:
    """Every dataset the caller may read, in batches (keyset on the row key), for exports."""
    last = 0
    while True:
        rows = list(db.scalars(select(Dataset).where(visible(who), Dataset.pk > last).order_by(Dataset.pk)
                               .limit(batch)).unique())
        if not rows:
            return
        yield from rows
        last = rows[-1].pk
        db.expunge_all()


