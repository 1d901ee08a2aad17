"""Full-text search over title, description and keywords: SQLite FTS5 or PostgreSQL tsvector.

A person's search text never reaches FTS or tsquery syntax as typed. It is cut into words
(letters and digits; everything else, quotes, operators, SQL, is a separator) and each word is
rebuilt as a quoted prefix term: ``"word"*`` for FTS5, ``'word':*`` for ``to_tsquery``, joined
with AND, and always sent as a bound parameter. Text without any word is a clear error.

The index itself is made by migration 0002: an external-content FTS5 table kept in sync by
triggers on SQLite, a GIN expression index on PostgreSQL. The expressions below must stay
identical to the migration's for PostgreSQL to use its index.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CTE, ColumnElement, Select, bindparam, func, literal_column, select, text
from sqlalchemy.orm import Session

from catalogue.errors import InvalidQuery
from catalogue.models import FTS_TABLE, PG_SEARCH_INDEX

MAX_TERMS = 12
_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits, as FTS5's unicode61 tokenizer splits
# The migration's index expression, with the columns qualified (queries join other tables).
PG_DOCUMENT = (
    "to_tsvector('simple'::regconfig, coalesce(catalogue_datasets.title, '') || ' ' || "
    "coalesce(catalogue_datasets.description, '') || ' ' || coalesce(catalogue_datasets.keywords::text, ''))"
)
# bm25 weights for title, description, keywords.
_BM25 = f"bm25({FTS_TABLE}, 10.0, 1.0, 5.0)"


def terms_of(text_: str) -> list[str]:
    """The words of a search text, lower-cased, deduplicated, at most MAX_TERMS.

    Raises InvalidQuery (a 422 naming ``q``) when nothing searchable is left."""
    words: dict[str, None] = {}
    for w in _WORD.findall(text_.lower()):
        words.setdefault(w[:64], None)
    if not words:
        raise InvalidQuery(
            "the search text has no letters or digits to look for",
            hint="search for words, e.g. 'ocean temperature'; punctuation and operators are ignored",
            field="q",
        )
    if len(words) > MAX_TERMS:
        raise InvalidQuery(f"the search text has more than {MAX_TERMS} words", hint="use fewer words", field="q")
    return list(words)


def fts5_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression: every term quoted (inner quotes doubled) as a prefix, ANDed."""
    return " AND ".join('"' + t.replace('"', '""') + '"*' for t in terms)


def tsquery(terms: list[str]) -> str:
    """A to_tsquery expression: every term quoted as a lexeme (quotes and backslashes escaped), prefix, ANDed."""
    return " & ".join("'" + t.replace("\\", "\\\\").replace("'", "''") + "':*" for t in terms)


@dataclass(frozen=True)
class Match:
    """What a listing query needs to search: a source to start from (SQLite), a condition
    (PostgreSQL) and a rank (ascending = best first)."""

    rank: ColumnElement[Any]
    source: CTE | None = None  # SQLite: the matching rows and their scores, joined on pk
    condition: ColumnElement[bool] | None = None


def match(dialect: str, terms: list[str], window: int | None = None) -> Match:
    """The search source, condition and ranking for a dialect.

    ``window`` (SQLite): keep only the best ``window`` matches, ordered by (score, rowid), in the
    source. Scoring every match is the price of exact bm25 ranking, but then only the window is
    joined to the datasets and filtered, instead of every match: a caller that gets fewer rows than
    it needs asks again with a wider window (see ``catalogue.service``). None keeps every match."""
    if dialect == "sqlite":
        # The matches are scored once, in C, in a materialised CTE that drives the query: the
        # planner never probes the index row by row from another table's scan.
        score: ColumnElement[Any] = literal_column(_BM25).label("score")
        hits: Select[Any] = (
            select(literal_column("rowid").label("pk"), score)
            .select_from(text(FTS_TABLE))
            .where(literal_column(FTS_TABLE).op("MATCH")(bindparam("fts_q", fts5_query(terms))))
        )
        if window is not None:
            # SQLite keeps only the best `window` rows while sorting (a bounded sorter).
            hits = hits.order_by(literal_column("score"), literal_column("rowid")).limit(window)
        source = hits.cte("search_hits").prefix_with("MATERIALIZED")
        return Match(rank=source.c.score, source=source)
    if dialect == "postgresql":
        query = func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("ts_q", tsquery(terms)))
        document: ColumnElement[Any] = literal_column(PG_DOCUMENT)
        return Match(rank=-func.ts_rank(document, query), condition=document.op("@@")(query))
    raise InvalidQuery(f"full-text search is not available on {dialect}")


def count_up_to(session: Session, terms: list[str], limit: int) -> int:
    """How many datasets match (SQLite), counting no further than ``limit``: cheap, nothing is scored."""
    inner: Select[Any] = (select(literal_column("rowid")).select_from(text(FTS_TABLE))
             .where(literal_column(FTS_TABLE).op("MATCH")(bindparam("fts_q", fts5_query(terms)))).limit(limit))
    return int(session.scalar(select(func.count()).select_from(inner.subquery())) or 0)


def rebuild(session: Session) -> None:
    """Rebuild the index from the datasets table (after a restore or a table rebuild)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        session.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))  # noqa: S608 - constant
    elif dialect == "postgresql":
        session.execute(text(f"REINDEX INDEX {PG_SEARCH_INDEX}"))
    session.commit()


def pattern(terms: list[str]) -> re.Pattern[str]:
    """What highlight and snippet look for: the terms as word-start prefixes, as the index matches them."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{alternatives})[^\W_]*", re.IGNORECASE)


def _as_pattern(terms: list[str] | re.Pattern[str]) -> re.Pattern[str] | None:
    if isinstance(terms, re.Pattern):
        return terms
    return pattern(terms) if terms else None


def highlight(value: str, terms: list[str] | re.Pattern[str]) -> str:
    """The text HTML-escaped, with the matching words wrapped in <mark> (terms, or their pattern())."""
    found = _as_pattern(terms)
    if found is None or not value:
        return html.escape(value)
    out: list[str] = []
    last = 0
    for m in found.finditer(value):
        out.append(html.escape(value[last:m.start()]))
        out.append(f"<mark>{html.escape(m.group(0))}</mark>")
        last = m.end()
    out.append(html.escape(value[last:]))
    return "".join(out)


def snippet(value: str, terms: list[str] | re.Pattern[str], width: int = 240) -> str:
    """Up to ``width`` characters around the first match, HTML-escaped and highlighted."""
    found = _as_pattern(terms)
    first = found.search(value) if found is not None else None
    start = 0 if first is None else max(0, first.start() - width // 3)
    if start:
        space = value.rfind(" ", 0, start)
        start = space + 1 if space >= 0 and start - space < 30 else start
    piece = value[start:start + width]
    prefix = "…" if start else ""
    suffix = "…" if start + width < len(value) else ""
    return html.escape(prefix) + (highlight(piece, found) if found is not None else html.escape(piece)) \
        + html.escape(suffix)
