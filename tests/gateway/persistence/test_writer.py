"""Group commit: concurrent inserts share commits, each caller hears about its own record only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import IntegrityError

from gateway.core.db import make_engine, make_session_factory
from gateway.persistence.models import LogLine
from gateway.persistence.writer import GroupCommitWriter


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _count(engine: Engine, subject: str) -> int:
    with make_session_factory(engine)() as db:
        return int(db.scalar(select(func.count()).select_from(LogLine).where(LogLine.subject_id == subject)) or 0)


def test_concurrent_adds_are_committed_in_fewer_transactions(engine: Engine) -> None:
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    writer = GroupCommitWriter(make_session_factory(engine)).start()
    subject = uuid.uuid4().hex

    async def burst() -> list[LogLine]:
        lines = [LogLine(subject_id=subject, seq=n, text=f"line {n}") for n in range(300)]
        await asyncio.gather(*(writer.add(line) for line in lines))
        return lines

    try:
        lines = asyncio.run(burst())
    finally:
        writer.stop()
    assert _count(engine, subject) == 300
    assert all(line.id is not None for line in lines)  # each caller sees its row as written
    assert 1 <= len(commits) < 300, f"{len(commits)} commits for 300 records"


def test_a_bad_record_fails_alone(engine: Engine) -> None:
    writer = GroupCommitWriter(make_session_factory(engine)).start()
    subject = uuid.uuid4().hex

    async def burst() -> list[BaseException | None]:
        await writer.add(LogLine(subject_id=subject, seq=0, text="first"))
        # seq 0 again breaks the (subject_id, seq) unique constraint; the other nine are fine.
        lines = [LogLine(subject_id=subject, seq=n, text=f"line {n}") for n in range(10)]
        return await asyncio.gather(*(writer.add(line) for line in lines), return_exceptions=True)

    try:
        outcomes = asyncio.run(burst())
    finally:
        writer.stop()
    assert isinstance(outcomes[0], IntegrityError)
    assert outcomes[1:] == [None] * 9
    assert _count(engine, subject) == 10


def test_stop_writes_what_is_queued_and_refuses_more(engine: Engine) -> None:
    writer = GroupCommitWriter(make_session_factory(engine)).start()
    subject = uuid.uuid4().hex

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(writer.add(LogLine(subject_id=subject, seq=n, text="x"))) for n in range(50)]
        await asyncio.sleep(0)  # every add is queued
        await asyncio.to_thread(writer.stop)
        await asyncio.gather(*tasks)
        with pytest.raises(RuntimeError, match="not running"):
            await writer.add(LogLine(subject_id=subject, seq=99, text="late"))

    asyncio.run(scenario())
    assert _count(engine, subject) == 50
