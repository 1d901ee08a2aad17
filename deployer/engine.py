"""The engine: deploy, undeploy and run workflows, persisting every transition, and resume.

Contract with the state store: every transition (node state change, operation start, operation
end, executor memo such as a Slurm job id) is saved before the engine moves on, so after a crash
``resume`` knows exactly which operations completed. A completed operation never runs again in
the same run. An operation that was *running* when the deployer died runs again on resume:
playbooks must be idempotent (the Ansible convention); batch jobs are not re-submitted, because
the executor looks their tag up first.

Independent nodes run in parallel on a thread pool (``workers``); a node starts when every node
it requires is started (deploy) or when every node requiring it is deleted (undeploy).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from deployer.credentials import AgentPool, CredentialProvider
from deployer.errors import AggregatedOperationError, DeployerError, OperationError, StateError
from deployer.executors import ExecutorRegistry, HostSpec, OperationRequest, OperationResult, registry
from deployer.functions import Context, Evaluator
from deployer.model import NodeInstance, NodeState, OperationDef, Topology
from deployer.plan import NodePlan, Phase, Plan, PlannedOp, deploy_plan, undeploy_plan
from deployer.state import DeploymentRecord, OpRecord, RunRecord, StateStore
from hpcwaas.ssh import SiteEndpoint

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEPLOY_ORDER = [
    NodeState.INITIAL,
    NodeState.CREATING,
    NodeState.CREATED,
    NodeState.CONFIGURING,
    NodeState.CONFIGURED,
    NodeState.STARTING,
    NodeState.STARTED,
]
HPC_SITE = "hpcwaas.nodes.HPCSite"
LOCALHOST = "hpcwaas.nodes.Localhost"


@dataclass(frozen=True)
class Event:
    """A progress event for the CLI (or the gateway's live log)."""

    kind: str  # node_state | op_start | op_done | op_skip | op_failed | log | run
    node: str | None = None
    op: str | None = None
    state: str | None = None
    message: str = ""
    seconds: float | None = None


EventSink = Callable[[Event], None]


def check_id(value: str, what: str = "deployment id") -> str:
    """Ids end up in Slurm tags and folder names: letters, digits, '_', '.', '-'."""
    if not _ID.fullmatch(value):
        raise StateError(f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return value


class _Hooks:
    def __init__(self, engine: Engine, run: RunRecord, key: str, node: str) -> None:
        self.engine, self.run, self.key, self.node = engine, run, key, node

    def log(self, line: str) -> None:
        self.engine._emit(Event("log", node=self.node, op=self.key, message=line))

    def remember(self, data: Mapping[str, Any]) -> None:
        with self.engine._lock:
            self.run.ops[self.key].memo.update(data)
            self.engine._commit()


class Engine:
    """Runs a topology's workflows against a state store."""

    def __init__(
        self,
        topology: Topology,
        store: StateStore,
        *,
        deployment_id: str,
        inputs: Mapping[str, Any],
        workers: int = 4,
        credentials: CredentialProvider | None = None,
        executors: ExecutorRegistry = registry,
        on_event: EventSink | None = None,
    ) -> None:
        self.topology = topology
        self.store = store
        self.deployment_id = check_id(deployment_id)
        self.workers = max(1, workers)
        self.credentials = credentials
        self.executors = executors
        self.on_event = on_event
        self._lock = threading.RLock()
        self.agents = AgentPool(credentials)
        secret_names = topology.secret_inputs()
        self.inputs = dict(inputs)
        self._secrets = tuple(str(v) for k, v in self.inputs.items() if k in secret_names and v not in (None, ""))
        self.executor_seconds = 0.0
        self.ops_run = 0
        record = store.load()
        if record is not None and record.id != self.deployment_id:
            raise StateError(f"the state folder holds deployment {record.id!r}, not {self.deployment_id!r}")
        if record is None:
            record = DeploymentRecord(
                id=self.deployment_id,
                template=topology.source,
                inputs={k: v for k, v in self.inputs.items() if k not in secret_names},
                secret_inputs=sorted(secret_names),
            )
        for name in topology.nodes:
            record.nodes.setdefault(name, NodeInstance(name=name))
        self.record = record

    # -- persistence and events ---------------------------------------------------------------

    def _commit(self) -> None:
        with self._lock:
            self.store.save(self.record)

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken progress display must not break a deployment
                log.exception("progress callback failed")

    def _set_state(self, node: str, state: NodeState, *, commit: bool = True) -> None:
        with self._lock:
            self.record.nodes[node].state = state
            self.record.nodes[node].attributes["state"] = state.value
            if commit:
                self._commit()
        self._emit(Event("node_state", node=node, state=state.value))

    def _new_run(self, workflow: str, inputs: Mapping[str, Any] | None = None) -> RunRecord:
        secret = self.topology.secret_inputs()
        run = RunRecord(
            id=f"r{len(self.record.runs) + 1}-{uuid.uuid4().hex[:6]}",
            workflow=workflow,
            inputs={k: v for k, v in (inputs or {}).items() if k not in secret},
        )
        with self._lock:
            self.record.runs.append(run)
            self._commit()
        return run

    def _finish_run(self, run: RunRecord, error: BaseException | None) -> None:
        with self._lock:
            run.status = "failed" if error else "done"
            run.error = str(error) if error else None
            run.finished_at = time.time()
            self._commit()
        self._emit(Event("run", message=f"{run.workflow} {run.status}"))

    def _resumable(self, workflow: str, resume: bool) -> RunRecord | None:
        last = self.record.last_run(workflow)
        if resume and last is not None and last.status != "done":
            return last
        return None

    # -- hosts, inputs, artifacts ---------------------------------------------------------------

    def _evaluator(self, extra: Mapping[str, Any] | None = None) -> Evaluator:
        return Evaluator(self.topology, self.inputs, self.record.nodes, extra_inputs=extra)

    def host_for(self, node_name: str) -> HostSpec:
        """Where operations of ``node_name`` run: the first HPCSite or Localhost up its host chain."""
        seen: set[str] = set()
        current: str | None = node_name
        ev = self._evaluator()
        while current is not None and current not in seen:
            seen.add(current)
            node = self.topology.nodes[current]
            if node.is_a(HPC_SITE):
                props = {k: ev.evaluate(v, Context(node=current)) for k, v in node.properties.items()}
                return HostSpec(
                    local=False,
                    endpoint=SiteEndpoint(
                        str(props["login_host"]), int(props.get("port") or 22), str(props["host_key"])
                    ),
                    username=str(props["username"]),
                    credential=props.get("credential"),
                    python_interpreter=str(props.get("python_interpreter") or "/usr/bin/python3"),
                    work_dir=props.get("work_dir"),
                    node=current,
                )
            if node.is_a(LOCALHOST):
                work = ev.evaluate(node.properties.get("work_dir"), Context(node=current))
                return HostSpec(local=True, work_dir=work, node=current)
            current = node.host
        return HostSpec(local=True)

    # -- one operation ----------------------------------------------------------------------------

    def run_operation(
        self,
        run: RunRecord,
        key: str,
        node: str,
        op: OperationDef,
        *,
        runs_on: str,
        ctx: Context,
        extra_inputs: Mapping[str, Any] | None = None,
        input_overrides: Mapping[str, Any] | None = None,
        attributes_to: str | None = None,
    ) -> None:
        """Run one operation once in ``run`` (skipped when already done there)."""
        with self._lock:
            rec = run.ops.get(key)
            if rec is not None and rec.status == "done":
                self._emit(Event("op_skip", node=node, op=op.key, message="already done"))
                return
            memo = dict(rec.memo) if rec is not None else {}
            attempts = rec.attempts + 1 if rec is not None else 1
            run.ops[key] = OpRecord(status="running", attempts=attempts, memo=memo)
            self._commit()
        self._emit(Event("op_start", node=node, op=op.key, message=key))
        started = time.perf_counter()
        try:
            assert op.implementation is not None
            ev = self._evaluator(extra_inputs)
            inputs = {k: ev.evaluate(v, ctx) for k, v in op.inputs.items()}
            if input_overrides:
                inputs.update({k: ev.evaluate(v, ctx) for k, v in input_overrides.items()})
            request = OperationRequest(
                deployment_id=self.deployment_id,
                run_id=run.id,
                node=node,
                op=op,
                inputs=inputs,
                host=self.host_for(runs_on),
                artifacts={n: a.path for n, a in self.topology.nodes[node].artifacts.items()},
                secrets=self._secrets,
                memo=memo,
                agents=self.agents,
                credentials=self.credentials,
                key=key,
            )
            executor = self.executors.get(op.implementation.artifact_type)
            result: OperationResult = executor.run(request, _Hooks(self, run, key, node))
        except DeployerError as exc:
            self._op_failed(run, key, node, op, exc)
            raise
        except Exception as exc:  # an executor bug must still leave a record and name the operation
            err = OperationError(f"{type(exc).__name__}: {exc}", node=node, interface=op.interface, operation=op.name)
            self._op_failed(run, key, node, op, err)
            raise err from exc
        target = attributes_to or node
        with self._lock:
            inst = self.record.nodes[target]
            inst.attributes.update(result.attributes)
            inst.outputs[op.key] = dict(result.outputs)
            for out_name, mapping in op.outputs.items():
                # TOSCA 1.3 output mapping: {output: [SELF, attribute]}
                if isinstance(mapping, list) and len(mapping) >= 2 and out_name in result.outputs:
                    inst.attributes[str(mapping[-1])] = result.outputs[out_name]
            run.ops[key].status = "done"
            run.ops[key].finished_at = time.time()
            self.executor_seconds += result.executor_seconds
            self.ops_run += 1
            self._commit()
        self._emit(Event("op_done", node=node, op=op.key, seconds=time.perf_counter() - started))

    def _op_failed(self, run: RunRecord, key: str, node: str, op: OperationDef, exc: DeployerError) -> None:
        with self._lock:
            run.ops[key].status = "failed"
            run.ops[key].error = str(exc)
            run.ops[key].finished_at = time.time()
            self.record.nodes[node].state = NodeState.ERROR
            self.record.nodes[node].attributes["state"] = NodeState.ERROR.value
            self._commit()
        self._emit(Event("op_failed", node=node, op=op.key, message=str(exc)))
        self._emit(Event("node_state", node=node, state=NodeState.ERROR.value))

    def _run_planned(self, run: RunRecord, pop: PlannedOp, prefix: str = "") -> None:
        if pop.requirement is not None:
            ctx = Context(node=pop.node, source=pop.node, target=pop.target, requirement=pop.requirement)
            on_target = pop.runs_on != pop.node
            self.run_operation(
                run,
                prefix + pop.key,
                pop.node,
                pop.op,
                runs_on=pop.runs_on,
                ctx=ctx,
                attributes_to=pop.target if on_target else pop.node,
            )
        else:
            self.run_operation(run, prefix + pop.key, pop.node, pop.op, runs_on=pop.runs_on, ctx=Context(node=pop.node))

    # -- node lifecycles -------------------------------------------------------------------------

    def _phase_needed(self, kind: str, state: NodeState, phase: Phase) -> bool:
        # Operations already done in this run are skipped one by one; this only skips whole
        # phases the node's state shows are behind it.
        if kind == "deploy":
            if state == NodeState.ERROR or phase.after is None:
                return True
            return _DEPLOY_ORDER.index(state) < _DEPLOY_ORDER.index(phase.after)
        if state in (NodeState.INITIAL, NodeState.DELETED):
            return False
        if phase.after == NodeState.CONFIGURED:  # stop: only what was started (or was stopping)
            return state in (NodeState.STARTED, NodeState.STARTING, NodeState.STOPPING, NodeState.ERROR)
        if phase.after is None:  # remove links: only if they were added
            return state in (NodeState.STARTED, NodeState.STOPPING, NodeState.ERROR)
        return True

    def run_node(self, run: RunRecord, plan: NodePlan, kind: str, prefix: str = "") -> None:
        """Move one node through the phases of a deploy or undeploy plan."""
        with self._lock:
            run.steps[prefix + plan.node] = "running"
        for phase in plan.phases:
            state = self.record.nodes[plan.node].state
            if not self._phase_needed(kind, state, phase):
                continue
            # Node states ride along with the next durable write (the operation's start record,
            # or the node's completion): a crash in between replays at most this bookkeeping.
            if phase.during is not None and phase.ops and state != phase.during:
                self._set_state(plan.node, phase.during, commit=False)
            for pop in phase.ops:
                self._run_planned(run, pop, prefix)
            if phase.after is not None and self.record.nodes[plan.node].state != phase.after:
                self._set_state(plan.node, phase.after, commit=False)
        with self._lock:
            run.steps[prefix + plan.node] = "done"
            self._commit()

    def _node_done(self, run: RunRecord, kind: str, node: str, prefix: str) -> bool:
        step = run.steps.get(prefix + node)
        if step is not None:
            return step == "done"
        state = self.record.nodes[node].state
        return state == NodeState.STARTED if kind == "deploy" else state in (NodeState.INITIAL, NodeState.DELETED)

    def execute_plan(self, run: RunRecord, plan: Plan, only: set[str] | None = None, prefix: str = "") -> None:
        """Run a plan's nodes on the worker pool, respecting dependencies."""
        names = [n for w in plan.waves for n in w if only is None or n in only]
        done = {
            n for n in plan.nodes if (only is not None and n not in only) or self._node_done(run, plan.kind, n, prefix)
        }
        pending = [n for n in names if n not in done]
        errors: list[DeployerError] = []
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deployer") as pool:
            while pending or running:
                if not errors:
                    for n in list(pending):
                        if all(w in done for w in plan.nodes[n].waits_for):
                            pending.remove(n)
                            running[pool.submit(self.run_node, run, plan.nodes[n], plan.kind, prefix)] = n
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = running.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        done.add(n)
                    elif isinstance(exc, DeployerError):
                        errors.append(exc)
                    else:
                        raise exc
        if errors:
            raise errors[0] if len(errors) == 1 else AggregatedOperationError(errors)
        if pending:
            raise DeployerError(f"nodes left undone: {', '.join(pending)}")

    # -- workflows ------------------------------------------------------------------------------

    def _guard(self, resume: bool, workflow: str) -> RunRecord | None:
        last = self.record.last_run()
        if last is not None and last.status == "running" and not resume:
            raise StateError(
                f"the {last.workflow} run {last.id} of {self.deployment_id} was interrupted",
                hint="run the same command with --resume to continue it",
            )
        return self._resumable(workflow, resume)

    def deploy(self, *, resume: bool = False) -> RunRecord:
        """Run the install workflow (or continue an interrupted one with ``resume``)."""
        run = self._guard(resume, "install") or self._new_run("install")
        with self._lock:
            self.record.status = "deploying"
            self._commit()
        return self._drive(run, lambda: self.execute_plan(run, deploy_plan(self.topology)), "deployed")

    def undeploy(self, *, resume: bool = False) -> RunRecord:
        """Run the uninstall workflow, dependants first."""
        run = self._guard(resume, "uninstall") or self._new_run("uninstall")
        with self._lock:
            self.record.status = "undeploying"
            self._commit()
        return self._drive(run, lambda: self.execute_plan(run, undeploy_plan(self.topology)), "undeployed")

    def run_workflow(self, name: str, inputs: Mapping[str, Any] | None = None, *, resume: bool = False) -> RunRecord:
        """Run an imperative workflow (install and uninstall map to deploy and undeploy)."""
        from deployer.workflows import WorkflowRunner

        if name == "install":
            return self.deploy(resume=resume)
        if name == "uninstall":
            return self.undeploy(resume=resume)
        runner = WorkflowRunner(self, name)
        resolved = runner.resolve_inputs(inputs or {})
        run = self._guard(resume, name) or self._new_run(name, resolved)
        return self._drive(run, lambda: runner.run(run, resolved), None)

    def _drive(self, run: RunRecord, body: Callable[[], None], success_status: str | None) -> RunRecord:
        with self.store.lock():
            self._emit(Event("run", message=f"{run.workflow} {run.id} started"))
            try:
                body()
            except BaseException as exc:
                self._finish_run(run, exc)
                if success_status is not None:
                    with self._lock:
                        self.record.status = "failed"
                        self._commit()
                raise
            finally:
                self.agents.close()
            self._finish_run(run, None)
            if success_status is not None:
                with self._lock:
                    self.record.status = success_status  # type: ignore[assignment]
                    self._commit()
        return run

    # -- outputs --------------------------------------------------------------------------------

    def outputs(self) -> dict[str, Any]:
        """The topology outputs, evaluated against the current state (secrets shown as ***)."""
        secret = self.topology.secret_inputs()
        shown = {k: ("***" if k in secret else v) for k, v in self.inputs.items()}
        ev = Evaluator(self.topology, shown, self.record.nodes)
        first = next(iter(self.topology.nodes))
        out: dict[str, Any] = {}
        for name, spec in self.topology.outputs.items():
            value = spec.get("value") if isinstance(spec, dict) else spec
            try:
                out[name] = ev.evaluate(value, Context(node=first, field=f"outputs.{name}"))
            except DeployerError as exc:
                out[name] = None
                log.debug("output %s not available: %s", name, exc)
        return out
