"""The service contract of the local stack and the registry of services."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hpcwaas.stack.info import StackInfo
from hpcwaas.stack.process import INSTALL_HINT, Daemon, StackError


@dataclass(frozen=True)
class ProcessStatus:
    """One row of ``status``: a process of a service."""

    service: str
    process: str
    state: str  # running | stopped | stale | unhealthy
    pid: int | None
    address: str


class Service(ABC):
    """A service of the stack: private state under ``<stack_dir>/<name>/``, start/stop/status.

    ``up`` must be idempotent: a running, healthy service is reused, and persistent state
    (databases, keys, raft data) is never wiped.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    # Executables that must exist (absolute paths or names on PATH).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self.dir = stack_dir / self.name

    @abstractmethod
    def daemons(self) -> list[Daemon]:
        """The processes of this service, in start order."""

    @abstractmethod
    def up(self) -> bool:
        """Start what is not running and configure; return True if everything was reused."""

    @abstractmethod
    def describe(self, info: StackInfo) -> None:
        """Fill this service's part of ``StackInfo``."""

    def healthy(self) -> bool:
        """Whether every daemon runs and answers (services add protocol-level checks)."""
        return all(d.pid() is not None and d.answers() for d in self.daemons())

    def down(self) -> list[str]:
        """Stop every daemon, last started first; return the names of those that were running."""
        return [d.name for d in reversed(self.daemons()) if d.stop()]

    def status(self) -> list[ProcessStatus]:
        """One row per daemon."""
        return [ProcessStatus(self.name, d.name, d.state(), d.pid(), d.address) for d in self.daemons()]

    def check_installed(self) -> None:
        """Raise StackError naming what to install when a required program is missing."""
        missing = [exe for exe in self.requires if shutil.which(exe) is None]
        if missing:
            raise StackError(f"{self.name}: missing {', '.join(missing)}", hint=INSTALL_HINT)


REGISTRY: dict[str, type[Service]] = {}


def register(cls: type[Service]) -> type[Service]:
    """Class decorator adding a service to the registry (later: Airflow, an Apptainer builder)."""
    REGISTRY[cls.name] = cls
    return cls
