"""A reference suspendable executor and the fake service behind it (tests of the engine).

:class:`FakeService` plays the outside world (an Airflow, a build service): runs triggered with
a tag, that end after a number of polls, can fail or be cancelled, and count every side effect.
:class:`FakeSuspendableExecutor` is what a gateway executor looks like: ``start`` triggers once
(or finds the run by tag), ``poll`` looks once, ``cancel`` stops; all state lives in the memo.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from deployer.errors import OperationError
from deployer.executors import OperationRequest, OperationResult, RunHooks, Waiting
from deployer.state import DeploymentRecord, MemoryStateStore


@dataclass
class FakeRun:
    run_id: str
    tag: str
    node: str
    polls_needed: int
    fail: bool = False
    state: str = "queued"  # queued | running | success | failed | cancelled
    polls: int = 0
    triggered_at: float = field(default_factory=time.monotonic)
    request: OperationRequest | None = None


class FakeService:
    """Runs that end after ``polls_needed`` polls; every trigger and cancel is counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, FakeRun] = {}
        self.by_tag: dict[str, str] = {}
        self.triggers: list[str] = []  # tags, one per side effect
        self.cancels: list[str] = []
        self.polls: list[str] = []
        self.active = 0
        self.max_active = 0

    def trigger(self, request: OperationRequest, polls_needed: int, fail: bool) -> str:
        with self.lock:
            run_id = f"run-{len(self.runs) + 1}"
            self.runs[run_id] = FakeRun(run_id, request.tag, request.node, polls_needed, fail, request=request)
            self.by_tag[request.tag] = run_id
            self.triggers.append(request.tag)
            return run_id

    def started_nodes(self) -> list[str]:
        return [self.runs[self.by_tag[t]].node for t in self.triggers]


class FakeSuspendableExecutor:
    """The reference implementation of :class:`deployer.executors.SuspendableExecutor`.

    Operation inputs it understands: ``polls`` (polls before the run ends, default 2), ``after``
    (seconds to wait between polls, default 0), ``fail`` (the run ends failed), ``result`` (an
    attribute value it sets).
    """

    needs_file = False

    def __init__(self, service: FakeService, *, on_trigger: Any = None, delay: float = 0.0) -> None:
        self.service = service
        self.on_trigger = on_trigger  # called right after the side effect (a test's crash point)
        self.delay = delay  # time spent in each call (for parallelism checks)

    def _enter(self) -> None:
        with self.service.lock:
            self.service.active += 1
            self.service.max_active = max(self.service.max_active, self.service.active)
        time.sleep(self.delay)

    def _leave(self) -> None:
        with self.service.lock:
            self.service.active -= 1

    def start(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        self._enter()
        try:
            run_id = request.memo.get("run_id") or self.service.by_tag.get(request.tag)
            if run_id is None:
                run_id = self.service.trigger(
                    request, int(request.inputs.get("polls", 2)), bool(request.inputs.get("fail", False))
                )
                if self.on_trigger is not None:
                    self.on_trigger(request)
                hooks.log(f"triggered {run_id}")
            else:
                hooks.log(f"found {run_id}")
            hooks.remember({"run_id": run_id})
            return Waiting(after=float(request.inputs.get("after", 0.0)), memo={"run_id": run_id},
                           attributes={"run_id": run_id}, message="queued")
        finally:
            self._leave()

    def poll(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        self._enter()
        try:
            # The engine's contract: a poll gets back what start remembered, never a bare memo.
            assert "run_id" in request.memo, f"poll of {request.key} without the memo start saved"
            run = self.service.runs[request.memo["run_id"]]
            with self.service.lock:
                run.polls += 1
                self.service.polls.append(run.run_id)
            if run.state == "cancelled":
                raise OperationError("the run was cancelled", node=request.node, interface=request.op.interface,
                                     operation=request.op.name)
            if run.polls < run.polls_needed:
                run.state = "running"
                return Waiting(after=float(request.inputs.get("after", 0.0)), memo={"seen": run.polls},
                               message=f"running {run.polls}/{run.polls_needed}")
            if run.fail:
                run.state = "failed"
                raise OperationError(f"{run.run_id} failed: boom", node=request.node,
                                     interface=request.op.interface, operation=request.op.name, run_id=run.run_id)
            run.state = "success"
            result = request.inputs.get("result", f"{request.node}-done")
            return OperationResult(attributes={"result": result}, outputs={"result": result, "run_id": run.run_id})
        finally:
            self._leave()

    def cancel(self, request: OperationRequest, hooks: RunHooks) -> None:
        run_id = request.memo.get("run_id") or self.service.by_tag.get(request.tag)
        if run_id is None:
            return
        run = self.service.runs[run_id]
        if run.state in ("queued", "running"):
            run.state = "cancelled"
        self.service.cancels.append(run_id)


class CountingBlockingExecutor:
    """A blocking executor that records its calls (an Ansible stand-in)."""

    needs_file = False

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.lock = threading.Lock()

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(request.key)
        return OperationResult(attributes={"made": request.node}, outputs={"made": request.node})


class FreezingStore(MemoryStateStore):
    """A store that stops persisting after :meth:`freeze`: what a SIGKILL at that moment leaves."""

    def __init__(self, record: DeploymentRecord | None = None) -> None:
        super().__init__(record)
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True

    def save(self, record: DeploymentRecord) -> None:
        if not self.frozen:
            super().save(record)
