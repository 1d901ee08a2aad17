"""Following a deployment's or an execution's log: long-poll pages and server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from sqlalchemy.orm import Session, sessionmaker

from gateway.persistence.models import LogLine
from gateway.schemas.runs import LogLineOut, LogPage
from gateway.services.runs import log_page

_POLL = 0.25


def page(db: Session, subject_id: str, after: int, wait: float, finished: Callable[[], bool],
         limit: int = 500) -> LogPage:
    """Lines after ``after``; with ``wait`` > 0, wait up to that long for the first new line.

    ``finished`` in the page means no line will follow the ones returned: the subject had ended
    before they were read (checked first, so a last line cannot slip in between) and fewer than
    ``limit`` came back.
    """
    deadline = time.monotonic() + wait
    while True:
        done = finished()
        lines = log_page(db, subject_id, after, limit)
        if lines or done or time.monotonic() >= deadline:
            break
        db.rollback()  # end the read transaction so the next query sees new rows
        time.sleep(_POLL)
    return LogPage(lines=[LogLineOut.model_validate(line) for line in lines],
                   next_seq=lines[-1].seq if lines else after, finished=done and len(lines) < limit)


async def events(sessions: sessionmaker[Session], subject_id: str, after: int,
                 finished: Callable[[Session], bool], heartbeat: float = 15.0) -> AsyncIterator[str]:
    """Server-sent events: one ``log`` event per line, then ``end`` once the subject finished.

    Each poll uses a short-lived session in a worker thread; between polls nothing is held.
    """
    last_sent = time.monotonic()
    while True:
        def poll(since: int) -> tuple[list[LogLine], bool]:
            with sessions() as db:
                done = finished(db)  # read first: a line written before the end is not missed
                return log_page(db, subject_id, since), done

        lines, done = await asyncio.to_thread(poll, after)
        for line in lines:
            after = line.seq
            yield f"id: {line.seq}\nevent: log\ndata: {LogLineOut.model_validate(line).model_dump_json()}\n\n"
            last_sent = time.monotonic()
        if done and not lines:
            yield f"event: end\ndata: {json.dumps({'next_seq': after})}\n\n"
            return
        if time.monotonic() - last_sent > heartbeat:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(_POLL)
