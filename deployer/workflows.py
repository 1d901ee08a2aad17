"""TOSCA 1.3 imperative workflows (``topology_template.workflows``).

A workflow has its own inputs and a graph of steps. Each step targets a node and runs its
activities in order: ``call_operation`` (with optional inputs that may use the workflow's
inputs), ``set_state``, ``delegate`` (the declarative install or uninstall of the target node)
and ``inline`` (another workflow, run as part of this one). ``on_success`` and ``on_failure``
link steps: a step runs once every step linking to it has finished and at least one of them
activated it (succeeded for an ``on_success`` link, failed for an ``on_failure`` link); a step
never activated is skipped. A failure with no ``on_failure`` handler fails the workflow.
Every activity is recorded in the run, so a resumed run skips what already completed.

A step whose operation waits (non-blocking call) is recorded ``waiting``; the steps it leads to
wait for it, independent branches go on. A failure recorded by an earlier call of the same run
stays a failure (only a resumed *failed* run retries its failed and skipped steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from deployer.engine import Cancelled, Suspended
from deployer.errors import DeployerError, InputError, OperationError
from deployer.functions import Context
from deployer.model import NodeState, WorkflowDef, WorkflowStep
from deployer.plan import deploy_plan, undeploy_plan
from deployer.state import RunRecord
from deployer.validate import resolve_inputs

if TYPE_CHECKING:
    from deployer.engine import Engine


class WorkflowRunner:
    """Runs one imperative workflow with an engine."""

    def __init__(self, engine: Engine, name: str, prefix: str = "") -> None:
        self.engine = engine
        if name not in engine.topology.workflows:
            known = ", ".join(["install", "uninstall", *sorted(engine.topology.workflows)])
            raise InputError(f"no workflow named {name!r} (known: {known})", name=name)
        self.workflow: WorkflowDef = engine.topology.workflows[name]
        self.prefix = prefix
        self.inputs: dict[str, Any] = {}

    def resolve_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow's declared inputs with defaults applied; unknown or missing ones refused."""
        return resolve_inputs(self.workflow.inputs, given, what=f"input of workflow {self.workflow.name!r}")

    def run(self, run: RunRecord, inputs: Mapping[str, Any]) -> None:
        """Run every step, in parallel where the links allow."""
        self.inputs = dict(inputs)
        steps = self.workflow.steps
        preds: dict[str, list[tuple[str, str]]] = {s: [] for s in steps}
        for step in steps.values():
            for nxt in step.on_success:
                preds[nxt].append((step.name, "done"))
            for nxt in step.on_failure:
                preds[nxt].append((step.name, "failed"))
        final = ("done",) if self.engine._retry_failed else ("done", "failed", "skipped")
        status = {s: run.steps[self._key(s)] for s in steps if run.steps.get(self._key(s)) in final}
        errors: list[DeployerError] = [
            self.engine.recorded_error(run, self._key(s))
            for s, value in status.items()
            if value == "failed" and not steps[s].on_failure
        ]
        wakes: list[float] = []
        suspended: set[str] = set()  # steps waiting: not scheduled again in this call
        cancelled = False
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=self.engine.workers, thread_name_prefix="workflow") as pool:
            while True:
                progressed = not cancelled
                while progressed:
                    progressed = False
                    for name in steps:
                        if name in status or name in suspended or name in running.values():
                            continue
                        incoming = preds[name]
                        if any(p not in status for p, _ in incoming):
                            continue
                        if incoming and not any(status[p] == want for p, want in incoming):
                            status[name] = "skipped"
                            self._mark(run, name, "skipped")
                            progressed = True
                            continue
                        running[pool.submit(self._run_step, run, steps[name])] = name
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    name = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        status[name] = "done"
                        self._mark(run, name, "done")
                    elif isinstance(exc, Suspended):
                        wakes.append(exc.wake_at)
                        suspended.add(name)
                        self._mark(run, name, "waiting")
                    elif isinstance(exc, Cancelled):
                        cancelled = True
                    elif isinstance(exc, DeployerError):
                        status[name] = "failed"
                        self._mark(run, name, "failed")
                        if not steps[name].on_failure:
                            errors.append(exc)
                    else:
                        raise exc
        if cancelled:
            raise Cancelled()
        if wakes:
            raise Suspended(min(wakes))
        if errors:
            raise errors[0]

    def _key(self, step: str) -> str:
        return f"{self.prefix}{self.workflow.name}.{step}"

    def _mark(self, run: RunRecord, step: str, value: str) -> None:
        self.engine._mark_step(run, self._key(step), value)

    def _run_step(self, run: RunRecord, step: WorkflowStep) -> None:
        engine = self.engine
        if run.steps.get(self._key(step.name)) is None:
            self._mark(run, step.name, "running")
        for i, activity in enumerate(step.activities):
            kind, arg = next(iter(activity.items()))
            key = f"{self._key(step.name)}#{i}"
            if kind == "call_operation":
                op_name = arg.get("operation") if isinstance(arg, dict) else arg
                overrides = (arg.get("inputs") or {}) if isinstance(arg, dict) else {}
                node = engine.topology.nodes[step.target]
                op = node.operations[str(op_name)]
                if op.implementation is None:
                    raise OperationError(
                        "the operation has no implementation", node=node.name, interface=op.interface, operation=op.name
                    )
                engine.run_operation(
                    run,
                    f"{key}:{step.target}:{op.key}",
                    step.target,
                    op,
                    runs_on=step.target,
                    ctx=Context(node=step.target),
                    extra_inputs=self.inputs,
                    input_overrides=overrides,
                    step=self._key(step.name),
                )
            elif kind == "set_state":
                if engine.record.nodes[step.target].state != NodeState(arg):
                    engine._set_state(step.target, NodeState(arg))
            elif kind == "delegate":
                ref = arg.get("workflow") if isinstance(arg, dict) else arg
                plan = deploy_plan(engine.topology) if ref == "install" else undeploy_plan(engine.topology)
                engine.run_node(run, plan.nodes[step.target], plan.kind, prefix=f"{key}:")
            elif kind == "inline":
                ref = str(arg.get("workflow") if isinstance(arg, dict) else arg)
                if ref in ("install", "uninstall"):
                    plan = deploy_plan(engine.topology) if ref == "install" else undeploy_plan(engine.topology)
                    engine.execute_plan(run, plan, prefix=f"{key}:")
                else:
                    inner = WorkflowRunner(engine, ref, prefix=f"{key}:")
                    given = (arg.get("inputs") or {}) if isinstance(arg, dict) else {}
                    inner.run(
                        run,
                        inner.resolve_inputs(
                            {**{k: v for k, v in self.inputs.items() if k in inner.workflow.inputs}, **given}
                        ),
                    )
