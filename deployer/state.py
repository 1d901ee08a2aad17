"""Persistent deployment state: the record, the StateStore protocol and a folder implementation.

The engine keeps one :class:`DeploymentRecord` in memory and hands the whole record to
``StateStore.save`` after every transition (node state change, operation start and end, job id
learnt). ``save`` must be durable when it returns: the engine acknowledges nothing before that.
The gateway provides a database-backed store with the same two methods (plus ``lock``); the
folder store here serves the CLI.

Secret inputs never reach the record: only their names are kept, and the values must be given
again to resume.
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

OpStatus = Literal["running", "done", "failed"]
RunStatus = Literal["running", "done", "failed"]
DeploymentStatus = Literal["new", "deploying", "deployed", "undeploying", "undeployed", "failed"]
STATE_VERSION = 1


class OpRecord(BaseModel):
    """One operation of one run."""

    status: OpStatus = "running"
    attempts: int = 1
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    memo: dict[str, Any] = Field(default_factory=dict, description="Executor facts for resume (job id).")


class RunRecord(BaseModel):
    """One run of a workflow (install, uninstall, or an imperative one)."""

    id: str
    workflow: str
    status: RunStatus = "running"
    inputs: dict[str, Any] = Field(default_factory=dict)
    ops: dict[str, OpRecord] = Field(default_factory=dict)
    steps: dict[str, str] = Field(default_factory=dict, description="Imperative step -> done/failed/skipped.")
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None


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


class StateStore(Protocol):
    """Where deployment records live. ``save`` is atomic and durable before it returns."""

    def load(self) -> DeploymentRecord | None:
        """The stored record, or None when there is none."""

    def save(self, record: DeploymentRecord) -> None:
        """Replace the stored record (atomically)."""

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
    """An in-memory store (tests, benches): same contract, no durability."""

    def __init__(self) -> None:
        self._data: str | None = None
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
