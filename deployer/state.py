"""Persistent deployment state: the record, the StateStore protocol and a folder implementation.

The engine keeps one :class:`DeploymentRecord` in memory and hands the whole record to
``StateStore.save`` after every transition (node state change, operation start and end, job id
learnt, operation waiting, run waiting/cancelled). ``save`` must be durable when it returns: the
engine acknowledges nothing before that. The folder store here serves the CLI; the gateway
provides a database-backed store (see :class:`StateStore` for the contract).

Secret inputs never reach the record: only their names are kept, and the values must be given
again to resume.

Statuses
--------
operation (:data:`OpStatus`): ``running`` (started, or being run by a blocking executor),
``waiting`` (a suspendable executor started it and said "look again at ``wake_at``"; the side
effect happened, ``memo`` says which: job id, DAG run id), ``done``, ``failed``, ``cancelled``.

run (:data:`RunStatus`): ``running`` (a call is driving it, or the process driving it died:
resume it), ``waiting`` (nothing can progress before ``wake_at``: resume it then, nothing holds
a thread or a connection meanwhile), ``done``, ``failed``, ``cancelled``. The last three are
terminal; a cancelled run is never resumed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from deployer.errors import StateError
from deployer.model import NodeInstance

OpStatus = Literal["running", "waiting", "done", "failed", "cancelled"]
RunStatus = Literal["running", "waiting", "done", "failed", "cancelled"]
StepStatus = Literal["running", "waiting", "done", "failed", "skipped", "cancelled"]
DeploymentStatus = Literal[
    "new", "deploying", "deployed", "undeploying", "undeployed", "failed", "cancelled"
]
TERMINAL_RUN_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ACTIVE_OP_STATUSES: frozenset[str] = frozenset({"running", "waiting"})
STATE_VERSION = 1


class OpRecord(BaseModel):
    """One operation of one run: what the gateway shows per step (status, times, job/DAG run ids)."""

    status: OpStatus = "running"
    attempts: int = Field(default=1, description="How many times the operation was started (not polled).")
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    memo: dict[str, Any] = Field(
        default_factory=dict, description="Executor facts for resume, poll and cancel (job_id, tag, dag_run_id)."
    )
    wake_at: float | None = Field(default=None, description="While waiting: when to poll it again (epoch s).")
    polls: int = Field(default=0, description="Polls since the last start.")
    node: str | None = Field(default=None, description="The node whose operation this is.")
    operation: str | None = Field(default=None, description="Interface.operation.")
    runs_on: str | None = Field(default=None, description="The node whose host runs it.")
    step: str | None = Field(default=None, description="The workflow step (or plan node) it belongs to.")
    outputs: dict[str, Any] = Field(default_factory=dict, description="What it produced (secrets masked).")


class RunRecord(BaseModel):
    """One run of a workflow (install, uninstall, or an imperative one)."""

    id: str
    workflow: str
    status: RunStatus = "running"
    inputs: dict[str, Any] = Field(default_factory=dict)
    ops: dict[str, OpRecord] = Field(default_factory=dict)
    steps: dict[str, str] = Field(
        default_factory=dict,
        description="Imperative step (or plan node) -> running/waiting/done/failed/skipped/cancelled.",
    )
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    wake_at: float | None = Field(default=None, description="While waiting: the earliest time to resume (epoch s).")
    cancel_requested: bool = Field(default=False, description="Cancel asked; a resume cancels instead of advancing.")
    calls: int = Field(default=0, description="Engine calls that advanced this run (start and resumes).")

    @property
    def terminal(self) -> bool:
        """True when the run is done, failed or cancelled: nothing will change it any more."""
        return self.status in TERMINAL_RUN_STATUSES

    def ops_of_step(self, step: str) -> dict[str, OpRecord]:
        """The operations recorded for one step (or plan node), in the order they started."""
        return {k: v for k, v in self.ops.items() if v.step == step}


class DeploymentRecord(BaseModel):
    """Everything the deployer knows about one deployment."""

    version: int = STATE_VERSION
    id: str
    template: str
    status: DeploymentStatus = "new"
    inputs: dict[str, Any] = Field(default_factory=dict, description="Non-secret inputs only.")
    secret_inputs: list[str] = Field(default_factory=list, description="Names only, never values.")
    nodes: dict[str, NodeInstance] = Field(default_factory=dict)
    runs: list[RunRecord] = Field(default_factory=list)
    updated_at: float = Field(default_factory=time.time)

    def last_run(self, workflow: str | None = None) -> RunRecord | None:
        """The most recent run (of ``workflow`` if given)."""
        for run in reversed(self.runs):
            if workflow is None or run.workflow == workflow:
                return run
        return None

    def run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        return next((r for r in self.runs if r.id == run_id), None)

    def fork(self, new_id: str, *, keep_runs: bool = False) -> DeploymentRecord:
        """A copy for a new record id: same template, inputs and node instances, no runs.

        The gateway gives each execution its own record forked from its deployment's: executions
        of one deployment then run side by side (one lease each), read the deployment's node
        attributes (installed paths, image files), and tag their jobs with their own id.
        """
        copy = self.model_copy(deep=True)
        copy.id = new_id
        if not keep_runs:
            copy.runs = []
        copy.updated_at = time.time()
        return copy


class StateStore(Protocol):
    """Where deployment records live.

    The contract a database-backed store (the gateway's) must keep:

    * ``load()`` returns the last record saved (a fresh object: the engine mutates what it gets),
      or None for a new deployment. The record is plain JSON (``DeploymentRecord.model_dump_json``
      / ``model_validate_json``): store it in one column; ``record.id``, ``last_run().status`` and
      ``last_run().wake_at`` are what a scheduler needs to index.
    * ``save(record)`` replaces the stored record and is durable when it returns (commit the
      transaction). It is called from the engine's worker threads, one call at a time (the
      engine serialises saves under its own lock), many times per call: after every transition.
      It must not depend on the calling thread (open a short transaction per save, or use a
      connection that is safe to share across threads under that lock).
    * ``lock()`` gives the engine exclusive use of the record for one call. The folder store
      takes an flock; the gateway's worker already holds the row's lease, so its ``lock()`` is a
      no-op context manager. It must not block for long: raise StateError when taken.

    Nothing in the engine assumes a folder: per-run scratch space (ansible-runner data dirs,
    ssh-agent sockets) lives in temporary directories removed when the call ends.
    """

    def load(self) -> DeploymentRecord | None:
        """The stored record, or None when there is none."""

    def save(self, record: DeploymentRecord) -> None:
        """Replace the stored record (atomically, durably)."""

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive use of this deployment by one deployer (raises StateError if taken)."""


class FolderStateStore:
    """A deployment's state in a folder: ``state.json`` replaced atomically, and a lock file."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "state.json"

    def load(self) -> DeploymentRecord | None:
        """Read state.json (None if the folder has none)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            return DeploymentRecord.model_validate_json(text)
        except ValidationError as exc:
            raise StateError(
                f"{self.path} is not a deployer state file: {exc.errors()[0]['msg']}",
                hint="point --state at another folder, or remove this one",
            ) from exc

    def save(self, record: DeploymentRecord) -> None:
        """Write to a temporary file, fsync, rename over state.json, fsync the folder."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        record.updated_at = time.time()
        data = record.model_dump_json().encode()
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An flock on ``lock``: released by the kernel if the process dies (so resume works)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateError(
                    f"another deployer is working on {self.folder}",
                    hint="wait for it to finish, or stop it first",
                ) from exc
            yield
        finally:
            os.close(fd)


class MemoryStateStore:
    """An in-memory store (tests, benches, a model for a DB row): same contract, no durability."""

    def __init__(self, record: DeploymentRecord | None = None) -> None:
        self._data: str | None = record.model_dump_json() if record is not None else None
        self.saves = 0

    def load(self) -> DeploymentRecord | None:
        """The last saved record."""
        return DeploymentRecord.model_validate_json(self._data) if self._data else None

    def save(self, record: DeploymentRecord) -> None:
        """Keep a serialised copy (so callers cannot mutate what was saved)."""
        self._data = record.model_dump_json()
        self.saves += 1

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """No locking needed in one process."""
        yield


def dump_public(record: DeploymentRecord) -> dict[str, Any]:
    """The record as plain JSON-able data (for ``--json`` output)."""
    out: dict[str, Any] = json.loads(record.model_dump_json())
    return out
