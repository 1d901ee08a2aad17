"""The deployer's state kept in the gateway database, and the log lines a run produces."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from deployer.engine import Event
from deployer.errors import StateError
from deployer.state import DeploymentRecord
from gateway.persistence.models import Deployment, Execution, LogLine


class LeaseLost(StateError):
    """Another worker took the record over (our lease expired): stop touching it."""

    code = "lease_lost"


class DbStateStore:
    """A deployer ``StateStore`` over the ``record`` column of a leased row.

    Every save is fenced by the lease: if another worker took the record over, the write is
    refused and the engine stops, so two workers never interleave transitions.
    """

    def __init__(self, sessions: sessionmaker[Session], model: type[Deployment] | type[Execution], record_id: str,
                 owner: str, initial: DeploymentRecord | None = None) -> None:
        self.sessions, self.model, self.record_id, self.owner = sessions, model, record_id, owner
        self._initial = initial

    def load(self) -> DeploymentRecord | None:
        """The stored record; for a first run, the initial record given (e.g. the deployment's)."""
        with self.sessions() as db:
            raw = db.scalar(select(self.model.record).where(self.model.id == self.record_id))
        if raw is None:
            return self._initial.model_copy(deep=True) if self._initial is not None else None
        return DeploymentRecord.model_validate(raw)

    def save(self, record: DeploymentRecord) -> None:
        """Persist the record (committed before this returns) if we still hold the lease."""
        data: dict[str, Any] = record.model_dump(mode="json")
        with self.sessions() as db:
            result = db.execute(
                update(self.model)
                .where(self.model.id == self.record_id, self.model.lease_owner == self.owner)
                .values(record=data)
            )
            db.commit()
        if getattr(result, "rowcount", 0) != 1:
            raise LeaseLost(f"{self.record_id}: another worker took this record over")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The lease is the lock: nothing more to take."""
        yield


class LogSink:
    """Turns deployer events into numbered log lines of one deployment or execution."""

    def __init__(self, sessions: sessionmaker[Session], subject_id: str) -> None:
        self.sessions, self.subject_id = sessions, subject_id
        self._lock = threading.Lock()
        with sessions() as db:
            self._seq = db.scalar(select(func.max(LogLine.seq)).where(LogLine.subject_id == subject_id)) or 0

    def write(self, text: str, *, level: str = "info", step: str | None = None) -> None:
        """Append one line (best effort: a log write never fails a run)."""
        with self._lock, contextlib.suppress(Exception), self.sessions() as db:
            self._seq += 1
            db.add(LogLine(subject_id=self.subject_id, seq=self._seq, level=level, step=step, text=text[:8000]))
            db.commit()

    def __call__(self, event: Event) -> None:
        where = ".".join(p for p in (event.node, event.op) if p)
        if event.kind == "log":
            self.write(event.message, step=where or None)
        elif event.kind == "op_wait" and event.message.startswith("waiting: "):  # a service away
            self.write(f"{where}: {event.message}", level="warning", step=where or None)
        elif event.kind == "op_failed":
            self.write(f"{where}: failed: {event.message}", level="error", step=where or None)
        elif event.kind in ("op_start", "op_done", "op_skip", "node_state", "run"):
            detail = event.state or event.message or event.kind
            took = f" ({event.seconds:.1f} s)" if event.seconds is not None else ""
            # Each wake-up of a waiting run and each poll is bookkeeping, not news: debug level.
            chatter = (event.kind == "run" and (" resumed" in detail or " waiting" in detail)) or \
                (event.kind == "op_start" and detail.endswith("(poll)"))
            self.write(f"{where + ': ' if where else ''}{event.kind.replace('_', ' ')} {detail}{took}".strip(),
                       level="debug" if chatter else "info", step=where or None)
