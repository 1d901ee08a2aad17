"""Operation executors and the registry that picks one per implementation artifact type.

An executor runs one operation on one host and returns the attributes and outputs it produced.
The registry is the extension point for services that come later (image builds, data staging):
they register a handler for their artifact type and the profile's node types start working, with
no change to the engine.

Built in:

========================================================  ===================================
artifact type                                             executor
========================================================  ===================================
``hpcwaas.artifacts.Implementation.Ansible`` (``.yml``)   :mod:`deployer.executors.ansible`
``hpcwaas.artifacts.Implementation.SlurmJob``             :mod:`deployer.executors.slurm`
``hpcwaas.artifacts.Implementation.Noop``                 does nothing (abstract nodes, benches)
``hpcwaas.artifacts.Implementation.Delegated``            refuses until a service registers
========================================================  ===================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deployer.credentials import AgentPool, CredentialProvider
from deployer.errors import UnsupportedImplementation
from deployer.model import OperationDef
from hpcwaas.ssh import SiteEndpoint

ANSIBLE = "hpcwaas.artifacts.Implementation.Ansible"
SLURM_JOB = "hpcwaas.artifacts.Implementation.SlurmJob"
NOOP = "hpcwaas.artifacts.Implementation.Noop"
DELEGATED = "hpcwaas.artifacts.Implementation.Delegated"


@dataclass(frozen=True)
class HostSpec:
    """Where an operation runs: the controller itself, or a site's login host over SSH."""

    local: bool = True
    endpoint: SiteEndpoint | None = None
    username: str | None = None
    credential: str | None = None
    python_interpreter: str = "/usr/bin/python3"
    work_dir: str | None = None
    node: str | None = None  # the node template that describes this host

    @property
    def label(self) -> str:
        """A short description for progress lines."""
        if self.local or self.endpoint is None:
            return "localhost"
        return f"{self.username}@{self.endpoint.label}"


@dataclass
class OperationRequest:
    """Everything an executor needs to run one operation (values already evaluated)."""

    deployment_id: str
    run_id: str
    node: str
    op: OperationDef
    inputs: dict[str, Any]
    host: HostSpec
    artifacts: dict[str, Path] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # values to mask in anything shown or stored
    memo: dict[str, Any] = field(default_factory=dict)  # what a previous attempt remembered
    agents: AgentPool | None = None  # ssh-agents of this run (Ansible over SSH)
    credentials: CredentialProvider | None = None  # for executors that open SSH themselves
    key: str = ""  # the operation's key in its run (unique per step and activity)

    @property
    def tag(self) -> str:
        """A stable id for this operation in this run (Slurm ``--comment``, logs)."""
        return f"hpcwaas:{self.deployment_id}:{self.run_id}:{self.key or self.node + ':' + self.op.key}"

    def mask(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for secret in self.secrets:
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


@dataclass
class OperationResult:
    """What an operation produced."""

    attributes: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    executor_seconds: float = 0.0  # time spent inside the tool (ansible-playbook, Slurm), for the bench


class RunHooks(Protocol):
    """Callbacks an executor uses while it runs."""

    def log(self, line: str) -> None:
        """Stream one line of output."""

    def remember(self, data: Mapping[str, Any]) -> None:
        """Persist facts needed to resume without repeating a side effect (e.g. a job id)."""


class Executor(Protocol):
    """Runs operations of one implementation type."""

    needs_file: bool

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Run the operation; raise OperationError on failure."""


class NoopExecutor:
    """Succeeds at once: for abstract nodes and for measuring orchestration overhead."""

    needs_file = False

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Do nothing."""
        return OperationResult()


class DelegatedExecutor:
    """Placeholder for operations a later service implements (image builds, data staging)."""

    needs_file = False

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Refuse with a clear message."""
        raise UnsupportedImplementation(
            f"{request.node}: {request.op.key} is delegated to a service that is not registered in this deployer",
            hint="register an executor for hpcwaas.artifacts.Implementation.Delegated "
            "(deployer.executors.registry.register) or override the operation in the template",
            node=request.node,
            operation=request.op.key,
        )


class _Lazy:
    """An executor imported on first use (ansible_runner costs ~0.3 s to import)."""

    def __init__(self, module: str, attr: str, needs_file: bool) -> None:
        self._module, self._attr, self.needs_file = module, attr, needs_file
        self._instance: Executor | None = None

    def get(self) -> Executor:
        if self._instance is None:
            factory: Callable[[], Executor] = getattr(importlib.import_module(self._module), self._attr)
            self._instance = factory()
        return self._instance

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        return self.get().run(request, hooks)


class ExecutorRegistry:
    """Maps implementation artifact types to executors."""

    def __init__(self) -> None:
        self._by_type: dict[str, Executor] = {}

    def register(self, artifact_type: str, executor: Executor) -> None:
        """Register (or replace) the executor for an artifact type."""
        self._by_type[artifact_type] = executor

    def lookup(self, artifact_type: str) -> Executor | None:
        """The executor for a type, or None."""
        return self._by_type.get(artifact_type)

    def supported(self) -> list[str]:
        """Registered artifact types."""
        return sorted(self._by_type)

    def get(self, artifact_type: str) -> Executor:
        """The executor for a type (UnsupportedImplementation when none)."""
        found = self.lookup(artifact_type)
        if found is None:
            raise UnsupportedImplementation(f"no executor for implementation type {artifact_type}")
        return found


registry = ExecutorRegistry()
registry.register(ANSIBLE, _Lazy("deployer.executors.ansible", "AnsibleExecutor", needs_file=True))
registry.register("tosca.artifacts.Implementation.Ansible", registry.get(ANSIBLE))
registry.register(SLURM_JOB, _Lazy("deployer.executors.slurm", "SlurmJobExecutor", needs_file=False))
registry.register(NOOP, NoopExecutor())
registry.register(DELEGATED, DelegatedExecutor())
