"""Bring services of the local stack up and down, report their status, and keep stack.json."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Importing the modules registers their services.
from hpcwaas.stack import airflow, apptainer, openbao, postgres, slurm, sshd  # noqa: F401
from hpcwaas.stack.base import REGISTRY, ProcessStatus, Service
from hpcwaas.stack.info import STACK_JSON, StackInfo, load_stack_info
from hpcwaas.stack.process import StackError, ensure_dir

# What `up` starts: the dev OpenBao for tests, or (--demo) the persistent one.
# The Apptainer builder is prepared once (a few minutes cold), then reused in no time.
DEFAULT_SERVICES = ("openbao-dev", "sshd", "slurm", "postgres", "apptainer", "airflow")
DEMO_SERVICES = ("openbao-raft", "sshd", "slurm", "postgres", "apptainer", "airflow")


@dataclass(frozen=True)
class UpResult:
    """What ``up`` did for one service."""

    service: str
    reused: bool
    seconds: float
    error: StackError | None = None


def resolve(only: Iterable[str] | None, demo: bool = False) -> list[str]:
    """Service names to act on; ``openbao``/``vault`` mean the flavour ``demo`` selects."""
    if not only:
        return list(DEMO_SERVICES if demo else DEFAULT_SERVICES)
    names: list[str] = []
    for raw in only:
        name = raw.strip()
        if name in ("openbao", "vault", "bao"):
            name = "openbao-raft" if demo else "openbao-dev"
        if name not in REGISTRY:
            raise StackError(f"unknown service {raw!r}", hint=f"choose among: {', '.join(sorted(REGISTRY))}")
        if name not in names:
            names.append(name)
    return names


class Stack:
    """The services of the stack, all under one state directory."""

    def __init__(self, stack_dir: Path | None = None) -> None:
        if stack_dir is None:
            from hpcwaas.settings import get_settings

            stack_dir = get_settings().stack_dir
        self.dir = Path(stack_dir)

    def service(self, name: str) -> Service:
        """The service called ``name``."""
        return REGISTRY[name](self.dir)

    def up(
        self,
        names: list[str],
        on_start: Callable[[str], None] | None = None,
        on_done: Callable[[UpResult], None] | None = None,
    ) -> list[UpResult]:
        """Start the services (concurrently: they do not depend on each other) and write stack.json."""
        if os.geteuid() != 0:
            raise StackError("the stack must be started as root (it runs sshd, Slurm and PostgreSQL)")
        self._check_reachable()
        # The directory must be traversable by the site users (slurm.conf, munge socket) and postgres.
        ensure_dir(self.dir, 0o755)
        services = [self.service(n) for n in names]
        for service in services:
            service.check_installed()
        with self._lock():
            return self._up(services, on_start, on_done)

    def _up(
        self,
        services: list[Service],
        on_start: Callable[[str], None] | None,
        on_done: Callable[[UpResult], None] | None,
    ) -> list[UpResult]:
        """Start ``services`` in threads (under the lock) and record what they offer."""

        def start(service: Service) -> UpResult:
            if on_start:
                on_start(service.name)
            began = time.monotonic()
            try:
                reused = service.up()
                result = UpResult(service.name, reused, time.monotonic() - began)
            except StackError as exc:
                result = UpResult(service.name, False, time.monotonic() - began, exc)
            except Exception as exc:  # a bug or an unexpected answer: report it, keep the others going
                error = StackError(f"{type(exc).__name__}: {exc}", hint=f"see the logs under {service.dir}")
                result = UpResult(service.name, False, time.monotonic() - began, error)
            if on_done:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=len(services) or 1) as pool:
            results = list(pool.map(start, services))
        self._write_info([s for s, r in zip(services, results, strict=True) if r.error is None])
        return results

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time per stack directory (two would race on pid files and ports)."""
        ensure_dir(self.dir, 0o755)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another `up`/`down` runs
            yield
        finally:
            os.close(fd)

    def _check_reachable(self) -> None:
        """Site users and the postgres user must be able to walk down to the stack directory."""
        for parent in [*reversed(self.dir.parents), self.dir]:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise StackError(
                    f"{parent} is not traversable by other users, but site users need {self.dir}/slurm "
                    "and PostgreSQL runs as `postgres`",
                    hint="set HPCWAAS_STACK_DIR to a directory under /var/tmp or /srv (default /var/tmp/hpcwaas-stack)",
                )

    def _write_info(self, services: list[Service]) -> None:
        try:
            info = load_stack_info(self.dir)
        except (FileNotFoundError, ValueError):
            info = StackInfo(stack_dir=self.dir)
        for service in services:
            service.describe(info)
        info.save()

    def down(self, names: list[str] | None = None) -> dict[str, list[str]]:
        """Stop services (all registered ones by default); map service -> processes stopped."""
        targets = names or list(REGISTRY)
        if not self.dir.exists():
            return {}
        with self._lock():
            return {name: self.service(name).down() for name in reversed(targets)}

    def status(self, names: list[str] | None = None) -> list[ProcessStatus]:
        """One row per process of every (or the named) service."""
        rows: list[ProcessStatus] = []
        for name in names or list(REGISTRY):
            rows.extend(self.service(name).status())
        return rows

    def info(self) -> StackInfo:
        """The stack's stack.json."""
        return load_stack_info(self.dir)

    @property
    def info_file(self) -> Path:
        return self.dir / STACK_JSON
