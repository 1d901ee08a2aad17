"""Operation executors and the registry that picks one per implementation artifact type.

An executor runs one operation on one host and returns the attributes and outputs it produced.
Two kinds:

* a **blocking** executor has ``run(request, hooks) -> OperationResult`` and returns when the
  operation has ended (Ansible playbooks: seconds);
* a **suspendable** executor (:class:`SuspendableExecutor`) has ``start``, ``poll`` and
  ``cancel``; ``start`` and ``poll`` return either the final :class:`OperationResult` or
  :class:`Waiting` ("not finished, look again in ``after`` seconds; remember ``memo``"). The
  engine persists the operation as ``waiting`` with its memo and, in a non-blocking call, lets go
  of the thread; a later call polls it. Batch jobs, DAG runs and image builds are suspendable.
  It may also have ``run`` (used by blocking calls, e.g. to keep one SSH session open).

The registry is the extension point for the services (image builds, data staging): they
register an executor for their artifact type and the profile's node types start working, with
no change to the engine.

========================================================  ===================================
artifact type                                             executor
========================================================  ===================================
``hpcwaas.artifacts.Implementation.Ansible`` (``.yml``)   :mod:`deployer.executors.ansible`
``hpcwaas.artifacts.Implementation.SlurmJob``             :mod:`deployer.executors.slurm`
``hpcwaas.artifacts.Implementation.Noop``                 does nothing (abstract nodes, benches)
``hpcwaas.artifacts.Implementation.ImageBuild``           refuses until the gateway registers
``hpcwaas.artifacts.Implementation.ImageTransfer``        refuses until the gateway registers
``hpcwaas.artifacts.Implementation.StageIn``              refuses until the gateway registers
``hpcwaas.artifacts.Implementation.StageOut``             refuses until the gateway registers
``hpcwaas.artifacts.Implementation.Delegated``            refuses until a service registers
========================================================  ===================================
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from deployer.credentials import CredentialResolver
from deployer.errors import UnsupportedImplementation
from deployer.model import OperationDef
from hpcwaas.ssh import SiteEndpoint

ANSIBLE = "hpcwaas.artifacts.Implementation.Ansible"
SLURM_JOB = "hpcwaas.artifacts.Implementation.SlurmJob"
NOOP = "hpcwaas.artifacts.Implementation.Noop"
DELEGATED = "hpcwaas.artifacts.Implementation.Delegated"
IMAGE_BUILD = "hpcwaas.artifacts.Implementation.ImageBuild"
IMAGE_TRANSFER = "hpcwaas.artifacts.Implementation.ImageTransfer"
STAGE_IN = "hpcwaas.artifacts.Implementation.StageIn"
STAGE_OUT = "hpcwaas.artifacts.Implementation.StageOut"
#: Artifact types implemented by services outside the deployer (the gateway registers them).
SERVICE_TYPES = (IMAGE_BUILD, IMAGE_TRANSFER, STAGE_IN, STAGE_OUT, DELEGATED)
_TAG_BAD = re.compile(r"[^A-Za-z0-9_.:=,/-]")


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
    credentials: CredentialResolver | None = None  # the one way to a key: owner checked
    key: str = ""  # the operation's key in its run (unique per step and activity)
    properties: dict[str, Any] = field(default_factory=dict)  # the node's properties, evaluated
    node_type: str = ""  # the node template's type
    step: str | None = None  # the workflow step (or plan node) this operation belongs to
    attempt: int = 1  # how many times the operation was started, this one included
    context: Mapping[str, Any] = field(default_factory=dict)  # the caller's (gateway's) context, not persisted
    bundle_root: Path | None = None  # the workflow's own files (read-only inside a sandbox)
    sandbox: bool = True  # run developer code (playbooks) inside deployer.sandbox

    @property
    def tag(self) -> str:
        """A stable id for this operation in this run (Slurm ``--comment``, DAG run ids, logs).

        Only ``[A-Za-z0-9_.:=,/-]``, at most 128 characters (long ones end in a hash, so two
        operations never share a tag); the same on every attempt and every process, until a failed
        operation is retried on request (``memo["retry"]``): then the new try has a tag of its own,
        so it starts a new job or pipeline run instead of finding the failed one.
        """
        retry = int(self.memo.get("retry") or 0)
        raw = (f"hpcwaas:{self.deployment_id}:{self.run_id}:{self.key or self.node + ':' + self.op.key}"
               + (f":retry{retry}" if retry else ""))
        tag = _TAG_BAD.sub("_", raw)
        if len(tag) > 128:
            tag = tag[:111] + ":" + hashlib.sha256(raw.encode()).hexdigest()[:16]
        return tag

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


@dataclass(frozen=True)
class Waiting:
    """A suspendable executor's answer: not finished; poll again in ``after`` seconds.

    ``memo`` is merged into the operation's memo and saved before the engine moves on (put the
    job id, DAG run id, build id there; it comes back in ``request.memo`` on every poll and on
    cancel). ``attributes`` are set on the node already (e.g. ``job_id``, so outputs show it while
    the job runs). ``message`` is a human-readable state ("PENDING (Priority)", "queued"),
    streamed when it changes.
    """

    after: float = 5.0
    memo: Mapping[str, Any] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""


class RunHooks(Protocol):
    """Callbacks an executor uses while it runs."""

    def log(self, line: str) -> None:
        """Stream one line of output."""

    def remember(self, data: Mapping[str, Any]) -> None:
        """Persist facts needed to resume without repeating a side effect (e.g. a job id).

        Call it right after the side effect (sbatch, DAG trigger), before anything else that can
        fail: it is saved when it returns.
        """


class Executor(Protocol):
    """Runs operations of one implementation type to their end (blocking)."""

    needs_file: bool

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Run the operation; raise OperationError on failure."""


@runtime_checkable
class SuspendableExecutor(Protocol):
    """Starts an operation, answers polls, cancels it; holds nothing between calls.

    * ``start`` does the side effect once (submit, trigger), or finds the one a previous attempt
      did (``request.memo``, then ``request.tag``: an attempt may have died between the side
      effect and the save), and returns :class:`Waiting` (or the result when it is already over).
    * ``poll`` looks once (no side effect) and returns :class:`Waiting` or the final result, or
      raises :class:`deployer.errors.OperationError` when the operation failed.
    * ``cancel`` stops it (scancel, mark the DAG run failed); it must not fail when the operation
      already ended, and must find it by tag when ``request.memo`` is empty.

    Each call opens what it needs (an SSH session, an HTTP client) and closes it before it
    returns. Calls for one operation never overlap, but calls for different operations do
    (threads): keep no per-operation state on the executor, only in the memo.
    """

    needs_file: bool

    def start(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        """Start the operation (at most one side effect per operation and run)."""

    def poll(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        """Look at the operation once."""

    def cancel(self, request: OperationRequest, hooks: RunHooks) -> None:
        """Stop the operation if it still runs."""


AnyExecutor = Executor | SuspendableExecutor


def is_suspendable(executor: object) -> bool:
    """True when ``executor`` has ``start``, ``poll`` and ``cancel``."""
    return all(callable(getattr(executor, name, None)) for name in ("start", "poll", "cancel"))


class NoopExecutor:
    """Succeeds at once: for abstract nodes and for measuring orchestration overhead."""

    needs_file = False

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Do nothing."""
        return OperationResult()


class DelegatedExecutor:
    """Placeholder for operations a service implements (image builds, data staging)."""

    needs_file = False

    def __init__(self, artifact_type: str = DELEGATED) -> None:
        self.artifact_type = artifact_type

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Refuse with a clear message."""
        raise UnsupportedImplementation(
            f"{request.node}: {request.op.key} is implemented by a service that is not registered in this "
            f"deployer ({self.artifact_type})",
            hint=f"register an executor for {self.artifact_type} (deployer.executors.registry.register), "
            "run it through the gateway, or override the operation in the template",
            node=request.node,
            operation=request.op.key,
        )


class _Lazy:
    """An executor imported on first use (ansible_runner costs ~0.3 s to import)."""

    def __init__(self, module: str, attr: str, needs_file: bool) -> None:
        self._module, self._attr, self.needs_file = module, attr, needs_file
        self._instance: AnyExecutor | None = None

    def get(self) -> AnyExecutor:
        if self._instance is None:
            factory: Callable[[], AnyExecutor] = getattr(importlib.import_module(self._module), self._attr)
            self._instance = factory()
        return self._instance


class ExecutorRegistry:
    """Maps implementation artifact types to executors (blocking or suspendable).

    ``register`` replaces what was there; ``copy`` gives an independent registry (a gateway
    process can register its service executors on a copy and hand it to each Engine).
    """

    def __init__(self) -> None:
        self._by_type: dict[str, AnyExecutor | _Lazy] = {}

    def register(self, artifact_type: str, executor: AnyExecutor) -> None:
        """Register (or replace) the executor for an artifact type."""
        if not (callable(getattr(executor, "run", None)) or is_suspendable(executor)):
            raise TypeError(f"{executor!r} has neither run() nor start()/poll()/cancel()")
        self._by_type[artifact_type] = executor

    def _register_lazy(self, artifact_type: str, lazy: _Lazy) -> None:
        self._by_type[artifact_type] = lazy

    def lookup(self, artifact_type: str) -> AnyExecutor | None:
        """The executor for a type, or None (lazy ones are imported here)."""
        found = self._by_type.get(artifact_type)
        return found.get() if isinstance(found, _Lazy) else found

    def needs_file(self, artifact_type: str) -> bool | None:
        """Whether the type's executor reads its primary file (None: no executor); imports nothing."""
        found = self._by_type.get(artifact_type)
        return None if found is None else bool(getattr(found, "needs_file", False))

    def supported(self) -> list[str]:
        """Registered artifact types."""
        return sorted(self._by_type)

    def get(self, artifact_type: str) -> AnyExecutor:
        """The executor for a type (UnsupportedImplementation when none)."""
        found = self.lookup(artifact_type)
        if found is None:
            raise UnsupportedImplementation(f"no executor for implementation type {artifact_type}")
        return found

    def copy(self) -> ExecutorRegistry:
        """An independent registry with the same entries."""
        other = ExecutorRegistry()
        other._by_type = dict(self._by_type)
        return other


def default_registry() -> ExecutorRegistry:
    """The built-in executors; the service types refuse until something registers them."""
    reg = ExecutorRegistry()
    ansible = _Lazy("deployer.executors.ansible", "AnsibleExecutor", needs_file=True)
    reg._register_lazy(ANSIBLE, ansible)
    reg._register_lazy("tosca.artifacts.Implementation.Ansible", ansible)
    reg._register_lazy(SLURM_JOB, _Lazy("deployer.executors.slurm", "SlurmJobExecutor", needs_file=False))
    reg.register(NOOP, NoopExecutor())
    for service_type in SERVICE_TYPES:
        reg.register(service_type, DelegatedExecutor(service_type))
    return reg


#: The process-wide registry the engine uses by default.
registry = default_registry()
