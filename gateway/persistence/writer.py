"""Group commit: new records from concurrent requests share one transaction and one commit.

Invocations arrive in bursts (a campaign submits hundreds at once). Written one transaction per
request, the writers queue on the database's write lock: SQLite has one, and its busy handler
backs off by sleeping up to 100 ms a try, which made the slowest accepts wait seconds while the
database sat idle; every commit also pays its own fsync. Here one thread writes: it takes every
record waiting, inserts them in one transaction and commits once, then answers each caller. A
caller is answered only after its record is committed, so a 202 still means "persisted".
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from hpcwaas.db import Base

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    record: Base
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None] = field(init=False)

    def __post_init__(self) -> None:
        self.done = self.loop.create_future()

    def settle(self, error: BaseException | None) -> None:
        def apply() -> None:
            if self.done.done():  # the caller went away (request cancelled)
                return
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
            pass


class GroupCommitWriter:
    """Insert new ORM records in batches from one thread; ``await add(record)`` until committed."""

    def __init__(self, sessions: sessionmaker[Session], max_batch: int = 500) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> GroupCommitWriter:
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        """Write what is queued, then end the thread."""
        if self._thread is not None:
            self._closed.set()
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    async def add(self, record: Base) -> None:
        """Persist a new record; returns once it is committed (raises what the insert raised)."""
        if self._thread is None or self._closed.is_set():
            raise RuntimeError("the group-commit writer is not running")
        pending = _Pending(record, asyncio.get_running_loop())
        self._queue.put(pending)
        await pending.done

    def _run(self) -> None:
        stopping = False
        while True:
            first = None if stopping else self._queue.get()
            batch = [first] if first is not None else []
            stopping = stopping or first is None
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    continue
                batch.append(item)
            if batch:
                self._write(batch)
            elif stopping:  # everything queued before (and racing with) the stop is written
                return

    def _write(self, batch: list[_Pending]) -> None:
        try:
            with self._sessions() as db:
                db.add_all(p.record for p in batch)
                db.commit()
        except Exception as exc:
            if len(batch) == 1:
                batch[0].settle(exc)
                return
            # One bad record must not fail the others: write them one by one.
            log.info("group commit of %d records failed (%s); writing them one by one", len(batch), exc)
            for pending in batch:
                self._write([pending])
            return
        for pending in batch:
            pending.settle(None)
