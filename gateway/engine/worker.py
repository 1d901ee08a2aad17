"""Worker threads that claim due deployments and executions and advance them.

Run inside the gateway (default) and/or as ``waas worker`` processes; several of them, on one
PostgreSQL database, share the work through leases. A lease is renewed while a step runs (an
Ansible playbook can take a while); a worker that dies stops renewing, and the record becomes
claimable again when the lease expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from gateway.engine import leases
from gateway.engine.leases import Leasable
from gateway.engine.runner import RETRY_AFTER_ERROR, Outcome, Runner
from gateway.engine.store import LeaseLost, LogSink
from gateway.persistence.models import Deployment, Execution, Mirror, utcnow
from gateway.services import mirrors as mirror_service
from gateway.services import retention
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
RETENTION_SWEEP_SECONDS = 600.0  # how often a worker looks for run folders past their retention


class EngineWorker:
    """A pool of threads advancing leased records until stopped."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, vault: Vault,
                 threads: int | None = None) -> None:
        self.sessions, self.settings, self.vault = sessions, settings, vault
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=settings.engine_lease_seconds)
        self.runner = Runner(sessions, settings, vault, self.owner)
        self.threads = threads if threads is not None else settings.engine_workers
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> EngineWorker:
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, name=f"engine-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.threads and self.settings.run_retention_days > 0:
            sweeper = threading.Thread(target=self._sweep_loop, name="engine-retention", daemon=True)
            sweeper.start()
            self._threads.append(sweeper)
        log.info("engine worker %s started with %d threads", self.owner, self.threads)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout  # one budget for all threads: shutdown stays bounded
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        """Look for due work now (a record was just created)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did = self.step()
            except Exception:  # the database is down, say: back off and try again
                log.exception("engine worker step failed")
                did = False
            if not did:
                self._wake.wait(self.settings.engine_poll_seconds)
                self._wake.clear()

    def _sweep_loop(self) -> None:
        """Remove run folders past the retention, now and then (the first sweep after a pause)."""
        while not self._stop.wait(RETENTION_SWEEP_SECONDS):
            try:
                retention.sweep(self.sessions, self.vault, self.settings)
            except Exception:  # the database is down, say: the next sweep tries again
                log.exception("run folder retention sweep failed")

    def step(self) -> bool:
        """Claim and advance one due record; False when nothing was due."""
        for model in (Execution, Deployment, Mirror):
            with self.sessions() as db:
                record_id = leases.claim(db, model, self.owner, self.lease)
            if record_id is not None:
                self._advance(model, record_id)
                return True
        return False

    def _advance(self, model: Leasable, record_id: str) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(model, record_id, done), daemon=True)
        beat.start()
        outcome = Outcome(utcnow() + RETRY_AFTER_ERROR)
        try:
            if model is Execution:
                outcome = self.runner.advance_execution(record_id)
            elif model is Deployment:
                outcome = self.runner.advance_deployment(record_id)
            else:
                outcome = Outcome(mirror_service.run_due(self.sessions, self.vault, self.settings, record_id))
        except LeaseLost:
            log.warning("%s: lease lost to another worker; leaving it", record_id)
            return
        except Exception as exc:
            # Unexpected: keep the record, log where it broke, and look again later.
            log.exception("advancing %s %s failed", model.__tablename__, record_id)
            LogSink(self.sessions, record_id).write(
                f"internal error ({type(exc).__name__}); retrying in {RETRY_AFTER_ERROR.seconds} s", level="error")
        finally:
            done.set()
            beat.join(5)
        with self.sessions() as db:
            leases.release(db, model, record_id, self.owner, outcome.wake_at)

    def _heartbeat(self, model: Leasable, record_id: str, done: threading.Event) -> None:
        while not done.wait(self.lease.total_seconds() / 3):
            try:
                with self.sessions() as db:
                    if not leases.renew(db, model, record_id, self.owner, self.lease):
                        return
            except Exception:
                log.exception("renewing the lease of %s failed", record_id)
