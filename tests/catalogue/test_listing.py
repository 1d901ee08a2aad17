"""The fast listing paths give what the straightforward queries give, on SQLite and PostgreSQL.

- a relevance search on SQLite joins a window of the best matches and widens it when filters drop
  too many: every page, for every caller, equals the page cut from the query over every match;
- a keyword listing walks the keyword's rows, which carry copies of the sort keys: pages equal
  those of the plain query, and the copies follow changes of title and modification time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalogue import listing, search, service
from catalogue.models import Dataset, DatasetKeyword
from catalogue.schemas import DatasetFilters, DatasetUpdate
from catalogue.service import Principal
from gateway.core.db import make_engine, make_session_factory, upgrade

OWNER = Principal(user_id="listing-owner", username="listowner")
OTHER = Principal(user_id="listing-other", username="listother")
READER = Principal(user_id="listing-reader", username="listreader")
ADMIN = Principal(user_id="listing-admin", username="listadmin", is_admin=True)
CALLERS: list[Principal | None] = [None, OTHER, READER, OWNER, ADMIN]


@pytest.fixture
def db(database_url: str) -> Iterator[Session]:
    upgrade(database_url)
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


def _import(db: Session, unique: str, n: int = 60) -> None:
    rng = random.Random(unique)
    lines = []
    for i in range(n):
        words = " ".join(rng.sample(["ocean", "oceanic", "ice", "salt", "wind"], 2))
        lines.append(json.dumps({
            "title": f"{'Zq' + unique if i % 3 else 'Other'} {words} {rng.randrange(5)}",
            "description": f"zq{unique} " * rng.randrange(1, 4) + words,
            "keywords": [f"tag{unique}", *(["even" + unique] if i % 2 == 0 else [])],
            "format": "csv" if i % 5 == 0 else "netcdf",
            "access": "public" if i % 4 else "restricted",
            "readers": [READER.username] if i % 8 == 0 else [],
            "size_bytes": rng.randrange(100),
        }))
    service.import_records(db, OWNER, lines)


def _all_pages(db: Session, who: Principal | None, f: DatasetFilters) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = listing.list_datasets(db, who, f.model_copy(update={"cursor": cursor}))
        ids += [i.id for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids
        assert len(page.items) == f.limit


def _reference(db: Session, who: Principal | None, f: DatasetFilters, sort: str, order: str) -> list[str]:
    """The straightforward query: every match (or row) joined, filtered and sorted, no window, no walk."""
    dialect = db.get_bind().dialect.name
    terms = search.terms_of(f.q) if f.q else None
    stmt = listing._page_statement(dialect, who, f, terms, sort, order, None, 0).limit(None)
    pks = list(db.scalars(stmt))
    ids = {row[0]: row[1] for row in db.execute(select(Dataset.pk, Dataset.id).where(Dataset.pk.in_(pks)))}
    return [ids[pk] for pk in pks]


@pytest.mark.parametrize("windows", ["small", "default"])
def test_windowed_search_gives_the_pages_of_the_full_query(db: Session, unique: str, windows: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if windows == "small":  # widen often: windows of one or two rows per row asked for
        monkeypatch.setattr(listing, "_WINDOW_PER_ROW", 1)
        monkeypatch.setattr(listing, "_WINDOW_PER_ROW_FILTERED", 2)
        monkeypatch.setattr(listing, "_WINDOW_MIN", 1)
        monkeypatch.setattr(listing, "_WIDEN", 2)
    _import(db, unique)
    queries: list[dict[str, Any]] = [
        {"q": f"zq{unique}"}, {"q": f"zq{unique} ocean"}, {"q": f"zq{unique} oce"},
        {"q": f"zq{unique}", "format": "csv"}, {"q": f"zq{unique}", "keyword": [f"even{unique}"]},
        {"q": f"zq{unique}", "access": "restricted"}, {"q": f"zq{unique} nothingmatches"},
    ]
    for query in queries:
        for who in CALLERS:
            for limit in (1, 4, 7):
                f = DatasetFilters(limit=limit, **query)
                expected = _reference(db, who, f, "relevance", "asc")
                assert _all_pages(db, who, f) == expected, (query, who, limit)
                assert len(expected) == len(set(expected))
    # Reversed relevance and other sorts of a search keep working (every match, no window).
    f = DatasetFilters(q=f"zq{unique}", order="desc", limit=5)
    assert _all_pages(db, OWNER, f) == _reference(db, OWNER, f, "relevance", "desc")
    f = DatasetFilters(q=f"zq{unique}", sort="title", limit=5)
    assert _all_pages(db, OWNER, f) == _reference(db, OWNER, f, "title", "asc")


def test_keyword_listing_walks_in_order_and_follows_changes(db: Session, unique: str) -> None:
    _import(db, unique)
    tag, even = f"tag{unique}", f"even{unique}"
    for sort in ("modified", "created", "title", "size"):
        for order in ("asc", "desc"):
            for query in ({"keyword": [tag]}, {"keyword": [tag, even]}, {"keyword": [tag], "format": "csv"},
                          {"keyword": [even], "owner": OWNER.username}):
                for who in (None, READER, ADMIN):
                    f = DatasetFilters(limit=4, sort=sort, order=order, **query)
                    assert _all_pages(db, who, f) == _reference(db, who, f, sort, order), (sort, order, query)
    # Change a title (and so the modification time): the keyword rows' copies follow.
    first = db.scalars(select(Dataset).join(DatasetKeyword).where(DatasetKeyword.keyword == tag)
                       .order_by(Dataset.title)).first()
    assert first is not None
    service.update_dataset(db, OWNER, first.id, DatasetUpdate(title="Zzz last " + unique,
                                                              keywords=[tag, "new" + unique]))
    rows = db.scalars(select(DatasetKeyword).where(DatasetKeyword.dataset_pk == first.pk)).all()
    assert {r.keyword for r in rows} == {tag, "new" + unique}
    assert all((r.title, r.created_at, r.modified_at) == (first.title, first.created_at, first.modified_at)
               for r in rows)
    by_title = _all_pages(db, ADMIN, DatasetFilters(keyword=[tag], sort="title", limit=50))
    assert by_title[-1] == first.id
    newest = listing.list_datasets(db, ADMIN, DatasetFilters(keyword=[tag], limit=1)).items
    assert [d.id for d in newest] == [first.id]
    # Every keyword row of the import agrees with its dataset.
    pairs = db.execute(select(DatasetKeyword, Dataset).join(Dataset, Dataset.pk == DatasetKeyword.dataset_pk)
                       .where(DatasetKeyword.keyword == tag)).all()
    assert pairs and all((k.title, k.created_at, k.modified_at) == (d.title, d.created_at, d.modified_at)
                         for k, d in pairs)
