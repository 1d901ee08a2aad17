"""The engine: deploy, undeploy and run workflows, persisting every transition, and resume.

Contract with the state store: every transition (node state change, operation start, operation
end, executor memo such as a Slurm job id) is saved before the engine moves on, so after a crash
``resume`` knows exactly which operations completed. A completed operation never runs again in
the same run. An operation that was *running* when the deployer died runs again on resume:
playbooks must be idempotent (the Ansible convention); batch jobs are not re-submitted, because
the executor looks their tag up first.

Independent nodes run in parallel on a thread pool (``workers``); a node starts when every node
it requires is started (deploy) or when every node requiring it is deleted (undeploy).

Blocking and non-blocking calls
-------------------------------
``deploy``, ``undeploy`` and ``run_workflow`` take ``blocking``. A blocking call (the CLI) returns
when the run has ended; suspendable executors are driven by start, then sleep and poll. A
non-blocking call (the gateway's worker) returns as soon as nothing can progress without
waiting: every operation a suspendable executor answered with :class:`Waiting` is saved as
``waiting`` (with its memo: job id, DAG run id), the operations that do not depend on it still
run to their end in the same call, and the run comes back ``waiting`` with ``wake_at``, the
earliest time worth calling again with ``resume=True``. Such a call polls the waiting operations
whose time has come (no new side effect) and carries on. Nothing is held between calls: no
thread, no SSH session, no ssh-agent.

Non-blocking calls record failures in the run (``failed``, ``error``) and return it; blocking
calls raise them, as before.

Cancel
------
:meth:`Engine.cancel` (or a ``cancel_check`` that turns true while a call runs, or
:meth:`Engine.request_cancel` from another thread) cancels every running or waiting operation
through its executor (scancel, DAG run marked failed), marks them and the run ``cancelled`` and
skips the workflow steps that had not started. A cancelled run is never resumed.
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

from deployer.credentials import CredentialProvider, CredentialResolver
from deployer.errors import AggregatedOperationError, DeployerError, OperationError, StateError
from deployer.executors import (
    ExecutorRegistry,
    HostSpec,
    OperationRequest,
    OperationResult,
    Waiting,
    is_suspendable,
    registry,
)
from deployer.functions import Context, Evaluator
from deployer.model import NodeInstance, NodeState, OperationDef, Topology
from deployer.plan import NodePlan, Phase, Plan, PlannedOp, deploy_plan, undeploy_plan
from deployer.state import ACTIVE_OP_STATUSES, DeploymentRecord, OpRecord, RunRecord, StateStore
from deployer.transient import describe, transient_cause
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
MAX_WAIT = 24 * 3600.0  # a Waiting.after beyond this is clamped
TRANSIENT_WINDOW = 1800.0  # seconds an operation waits for a service that is away (an operator's setting)
_TRANSIENT_KEYS = ("transient_since", "transient_tries", "transient_reason", "transient_retry")


class Suspended(Exception):
    """Internal: an operation (or a branch) waits; the call unwinds and the run is saved waiting."""

    def __init__(self, wake_at: float) -> None:
        super().__init__(f"waiting until {wake_at}")
        self.wake_at = wake_at


class Cancelled(Exception):
    """Internal: a cancel was requested while the call ran; the call unwinds and cancels the run."""


class RecordedFailure(DeployerError):
    """A failure recorded by an earlier call of the same run (it is not retried on resume)."""

    code = "operation_failed"


@dataclass(frozen=True)
class Event:
    """A progress event for the CLI (or the gateway's live log)."""

    kind: str  # node_state | op_start | op_wait | op_done | op_skip | op_failed | op_cancelled | log | run
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
            rec = self.run.ops.get(self.key)
            if rec is not None:
                rec.memo.update(data)
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
        credentials: CredentialResolver | CredentialProvider | None = None,
        executors: ExecutorRegistry = registry,
        on_event: EventSink | None = None,
        context: Mapping[str, Any] | None = None,
        cancel_check: Callable[[], bool] | None = None,
        sandbox: bool = True,
        transient_window: float = TRANSIENT_WINDOW,
    ) -> None:
        """Load (or start) the record of ``deployment_id`` from ``store``.

        ``context`` reaches every executor as ``request.context`` (never persisted): the gateway
        passes e.g. its user, execution and site ids. ``cancel_check`` is asked before each
        operation starts and between polls of a blocking call: when it returns True the run is
        cancelled (e.g. the gateway reads its row's cancel flag). ``sandbox=False`` runs playbooks
        without :mod:`deployer.sandbox` (only for an operator's own templates, never the gateway).
        ``transient_window``: for how many seconds an operation that meets a service away
        (:mod:`deployer.transient`) waits and tries again before it fails.
        """
        self.transient_window = transient_window
        self.topology = topology
        self.store = store
        self.deployment_id = check_id(deployment_id)
        self.workers = max(1, workers)
        # A bare provider is the standalone deployer's operator; the gateway always passes a
        # resolver scoped to the user it acts for.
        self.credentials = (credentials if isinstance(credentials, CredentialResolver)
                            else CredentialResolver.for_operator(credentials))
        self.executors = executors
        self.on_event = on_event
        self.context: Mapping[str, Any] = dict(context or {})
        self.cancel_check = cancel_check
        self._cancel = threading.Event()
        self._blocking = True
        self._retry_failed = False
        self._driving = False
        self._last_wait: dict[str, str] = {}
        self._lock = threading.RLock()
        self.sandbox = sandbox
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

    def _new_run(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        secret: set[str] | None = None,
    ) -> RunRecord:
        secret = secret if secret is not None else self.topology.secret_inputs()
        if run_id is not None:
            check_id(run_id, "run id")
            if self.record.run(run_id) is not None:
                raise StateError(f"deployment {self.deployment_id} already has a run {run_id!r}")
        run = RunRecord(
            id=run_id or self._next_run_id(),
            workflow=workflow,
            inputs={k: v for k, v in (inputs or {}).items() if k not in secret},
        )
        with self._lock:
            self.record.runs.append(run)
            self._commit()
        return run

    def _next_run_id(self) -> str:
        return f"r{len(self.record.runs) + 1}-{uuid.uuid4().hex[:6]}"

    def _finish_run(self, run: RunRecord, error: BaseException | None) -> None:
        with self._lock:
            run.status = "failed" if error else "done"
            run.error = str(error) if error else None
            run.finished_at = time.time()
            run.wake_at = None
            self._commit()
        self._emit(Event("run", message=f"{run.workflow} {run.status}"))

    def _resumable(self, workflow: str, resume: bool, reopen: bool = False) -> RunRecord | None:
        last = self.record.last_run(workflow)
        self._retry_failed = False
        if resume and last is not None and last.status != "done":
            if last.status == "cancelled" and not reopen:
                raise StateError(
                    f"the {workflow} run {last.id} of {self.deployment_id} was cancelled: it cannot be resumed",
                    hint="start a new run (without resume), or reopen it",
                )
            if last.status == "cancelled":  # reopened on request: what was cancelled is retried
                last.cancel_requested = False
            # A failed (or reopened) run resumed: retry what failed or was cancelled.
            self._retry_failed = last.status in ("failed", "cancelled")
            if self._retry_failed:
                # Forget the failed and skipped steps now (saved with the run), not only for this
                # call: a retried step that waits is taken up by later calls, which must run the
                # steps after it too.
                last.steps = {name: state for name, state in last.steps.items() if state == "done"}
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

    def _cancel_wanted(self) -> bool:
        if self._cancel.is_set():
            return True
        if self.cancel_check is not None:
            try:
                if self.cancel_check():
                    self._cancel.set()
                    return True
            except Exception:  # a broken check must not break the run
                log.exception("cancel check failed")
        return False

    def request_cancel(self) -> None:
        """Ask a call running in another thread to stop and cancel its run (returns at once)."""
        self._cancel.set()

    def _request(
        self,
        run: RunRecord,
        key: str,
        node: str,
        op: OperationDef,
        *,
        runs_on: str,
        ctx: Context,
        memo: Mapping[str, Any],
        extra_inputs: Mapping[str, Any] | None = None,
        input_overrides: Mapping[str, Any] | None = None,
        step: str | None = None,
        attempt: int = 1,
        lenient: bool = False,
    ) -> OperationRequest:
        """The request for one operation; ``lenient`` drops inputs that cannot be evaluated (cancel)."""
        ev = self._evaluator(extra_inputs)

        def evaluate_all(values: Mapping[str, Any], where: Context, lenient: bool) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, value in values.items():
                try:
                    out[name] = ev.evaluate(value, where)
                except DeployerError:
                    if not lenient:
                        raise
            return out

        inputs = evaluate_all(op.inputs, ctx, lenient)
        if input_overrides:
            inputs.update(evaluate_all(input_overrides, ctx, lenient))
        template = self.topology.nodes[node]
        # Properties are a convenience for service executors: those not computable yet are left out.
        properties = evaluate_all(template.properties, Context(node=node, field="properties"), True)
        return OperationRequest(
            deployment_id=self.deployment_id,
            run_id=run.id,
            node=node,
            op=op,
            inputs=inputs,
            host=self.host_for(runs_on),
            artifacts={n: a.path for n, a in template.artifacts.items()},
            secrets=self._secrets,
            memo=dict(memo),
            credentials=self.credentials,
            key=key,
            properties=properties,
            node_type=template.type,
            step=step,
            attempt=attempt,
            context=self.context,
            bundle_root=self.topology.root,
            sandbox=self.sandbox,
        )

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
        step: str | None = None,
    ) -> None:
        """Run one operation once in ``run`` (skipped when already done there).

        An operation found ``waiting`` is polled, never started again. In a non-blocking call a
        :class:`Waiting` answer raises :class:`Suspended` (the caller's branch stops there).
        """
        with self._lock:
            rec = run.ops.get(key)
            if rec is not None and rec.status == "done":
                self._emit(Event("op_skip", node=node, op=op.key, message="already done"))
                return
            if rec is not None and rec.status == "cancelled" and not self._retry_failed:
                raise Cancelled()
            if rec is not None and rec.status == "failed" and not self._retry_failed:
                raise RecordedFailure(rec.error or f"{node}: {op.key} failed", node=node, operation=op.key)
            waiting = rec is not None and rec.status == "waiting"
            if not waiting and self._cancel_wanted():
                raise Cancelled()
            if rec is not None and waiting:
                if not self._blocking and rec.wake_at is not None and rec.wake_at > time.time() + 0.05:
                    raise Suspended(rec.wake_at)  # not due yet: no poll, no connection
                attempts = rec.attempts
            else:
                attempts = rec.attempts + 1 if rec is not None else 1
                # A failed operation retried on request starts afresh: what its failed try
                # remembered (its job, its pipeline run) is not looked for again.
                retried = rec is not None and rec.status in ("failed", "cancelled")
                run.ops[key] = OpRecord(
                    status="running",
                    attempts=attempts,
                    memo=({"retry": int(rec.memo.get("retry") or 0) + 1} if retried else dict(rec.memo))
                    if rec is not None else {},
                    node=node,
                    operation=op.key,
                    runs_on=runs_on,
                    step=step,
                )
                self._commit()
            memo = dict(run.ops[key].memo)
        self._emit(Event("op_start", node=node, op=op.key, message=key + (" (poll)" if waiting else "")))
        started = time.perf_counter()
        target = attributes_to or node
        hooks = _Hooks(self, run, key, node)
        try:
            assert op.implementation is not None
            request = self._request(
                run,
                key,
                node,
                op,
                runs_on=runs_on,
                ctx=ctx,
                memo=memo,
                extra_inputs=extra_inputs,
                input_overrides=input_overrides,
                step=step,
                attempt=attempts,
            )
            executor = self.executors.get(op.implementation.artifact_type)
            suspendable = is_suspendable(executor)
            outcome: OperationResult | Waiting
            if waiting and memo.get("transient_retry") != "start":
                outcome = self._poll(executor, request, hooks, run, key)
            elif suspendable and not (self._blocking and callable(getattr(executor, "run", None))):
                outcome = executor.start(request, hooks)  # type: ignore[union-attr]
            else:
                outcome = executor.run(request, hooks)  # type: ignore[union-attr]
            self._reached(run, key)
            while isinstance(outcome, Waiting):
                if not suspendable:
                    raise TypeError(f"{type(executor).__name__}.run returned Waiting; only start/poll may")
                wake_at = self._op_waiting(run, key, node, op, target, outcome)
                if not self._blocking:
                    raise Suspended(wake_at)
                if self._cancel.wait(max(0.0, wake_at - time.time())) or self._cancel_wanted():
                    raise Cancelled()
                request.memo = dict(run.ops[key].memo)
                outcome = self._poll(executor, request, hooks, run, key)
            result = outcome
        except (Suspended, Cancelled):
            raise
        except Exception as exc:
            again = self._wait_out(run, key, node, op, target, exc, retry="poll" if waiting and
                                   memo.get("transient_retry") != "start" else "start")
            if again is None:
                raise self._failure(run, key, node, op, exc) from exc
            if not self._blocking:
                raise Suspended(again) from None
            if self._cancel.wait(max(0.0, again - time.time())) or self._cancel_wanted():
                raise Cancelled() from None
            return self.run_operation(run, key, node, op, runs_on=runs_on, ctx=ctx, extra_inputs=extra_inputs,
                                      input_overrides=input_overrides, attributes_to=attributes_to, step=step)
        with self._lock:
            inst = self.record.nodes[target]
            inst.attributes.update(result.attributes)
            inst.outputs[op.key] = dict(result.outputs)
            for out_name, mapping in op.outputs.items():
                # TOSCA 1.3 output mapping: {output: [SELF, attribute]}
                if isinstance(mapping, list) and len(mapping) >= 2 and out_name in result.outputs:
                    inst.attributes[str(mapping[-1])] = result.outputs[out_name]
            rec = run.ops[key]
            rec.status = "done"
            for name in _TRANSIENT_KEYS:
                rec.memo.pop(name, None)
            rec.finished_at = time.time()
            rec.wake_at = None
            rec.outputs = dict(result.outputs)
            self.executor_seconds += result.executor_seconds
            self.ops_run += 1
            self._commit()
        self._emit(Event("op_done", node=node, op=op.key, seconds=time.perf_counter() - started))

    def _reached(self, run: RunRecord, key: str) -> None:
        """The operation's services answered: forget an earlier wait for one that was away (the
        next wake polls what was started instead of starting it again)."""
        with self._lock:
            memo = run.ops[key].memo
            if any(name in memo for name in _TRANSIENT_KEYS):
                for name in _TRANSIENT_KEYS:
                    memo.pop(name, None)
                self._commit()

    def _wait_out(self, run: RunRecord, key: str, node: str, op: OperationDef, target: str, exc: Exception,
                  retry: str) -> float | None:
        """Save the operation as waiting for a service that is away; None when ``exc`` is not such
        a fault or the window is spent. ``retry`` says what to do on waking: start it again (safe:
        executors find what a start already did by its tag) or poll it."""
        cause = transient_cause(exc)
        if cause is None or self.transient_window <= 0:
            return None
        now = time.time()
        with self._lock:
            memo = run.ops[key].memo
            since = float(memo.get("transient_since") or now)
            tries = int(memo.get("transient_tries") or 0) + 1
        if now - since >= self.transient_window:
            return None
        reason = describe(cause)
        moment = time.strftime("%H:%M:%S", time.localtime(since))
        return self._op_waiting(run, key, node, op, target, Waiting(
            after=min(5.0 * 2 ** min(tries - 1, 4), 60.0),
            memo={"transient_since": since, "transient_tries": tries, "transient_reason": reason,
                  "transient_retry": retry},
            message=f"waiting: {reason} (since {moment}; trying again until {self.transient_window / 60:.0f} "
                    "min have passed)"))

    def _failure(self, run: RunRecord, key: str, node: str, op: OperationDef, exc: Exception) -> DeployerError:
        """Record the operation failed; the error to raise (a service away past the window says for how long)."""
        err = exc if isinstance(exc, DeployerError) else OperationError(
            f"{type(exc).__name__}: {exc}", node=node, interface=op.interface, operation=op.name)
        with self._lock:
            since = run.ops[key].memo.get("transient_since")
        cause = transient_cause(exc)
        if cause is not None and since is not None:
            minutes = (time.time() - float(since)) / 60
            err = OperationError(f"{describe(cause)}; still away after {minutes:.0f} min of trying, so {node}: "
                                 f"{op.key} failed", node=node, interface=op.interface, operation=op.name,
                                 hint=f"an operator should check {cause.service or 'the site'}; then resume the run")
        self._op_failed(run, key, node, op, err)
        return err

    def _poll(
        self, executor: Any, request: OperationRequest, hooks: _Hooks, run: RunRecord, key: str
    ) -> OperationResult | Waiting:
        with self._lock:
            run.ops[key].polls += 1
        outcome: OperationResult | Waiting = executor.poll(request, hooks)
        return outcome

    def _op_waiting(
        self, run: RunRecord, key: str, node: str, op: OperationDef, target: str, waiting: Waiting
    ) -> float:
        """Save the operation as waiting (memo, wake time, attributes known so far); return wake_at."""
        after = min(max(float(waiting.after), 0.0), MAX_WAIT)
        wake_at = time.time() + after
        with self._lock:
            rec = run.ops[key]
            changed = rec.status != "waiting" or dict(rec.memo, **waiting.memo) != rec.memo
            rec.status = "waiting"
            rec.memo.update(waiting.memo)
            rec.wake_at = wake_at
            if waiting.attributes:
                self.record.nodes[target].attributes.update(waiting.attributes)
                changed = True
            if changed or not self._blocking:
                self._commit()
            announce = bool(waiting.message) and self._last_wait.get(key) != waiting.message
            self._last_wait[key] = waiting.message
        if announce:
            self._emit(Event("op_wait", node=node, op=op.key, message=waiting.message, seconds=after))
        return wake_at

    def _op_failed(self, run: RunRecord, key: str, node: str, op: OperationDef, exc: DeployerError) -> None:
        with self._lock:
            run.ops[key].status = "failed"
            run.ops[key].error = str(exc)
            run.ops[key].finished_at = time.time()
            run.ops[key].wake_at = None
            self.record.nodes[node].state = NodeState.ERROR
            self.record.nodes[node].attributes["state"] = NodeState.ERROR.value
            self._commit()
        self._emit(Event("op_failed", node=node, op=op.key, message=str(exc)))
        self._emit(Event("node_state", node=node, state=NodeState.ERROR.value))

    def _run_planned(self, run: RunRecord, pop: PlannedOp, prefix: str = "") -> None:
        step = prefix + pop.node
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
                step=step,
            )
        else:
            self.run_operation(
                run, prefix + pop.key, pop.node, pop.op, runs_on=pop.runs_on, ctx=Context(node=pop.node), step=step
            )

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

    def _mark_step(self, run: RunRecord, step: str, value: str) -> None:
        with self._lock:
            if run.steps.get(step) != value:
                run.steps[step] = value
                self._commit()

    def run_node(self, run: RunRecord, plan: NodePlan, kind: str, prefix: str = "") -> None:
        """Move one node through the phases of a deploy or undeploy plan."""
        step = prefix + plan.node
        with self._lock:
            run.steps[step] = "running"
        try:
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
        except Suspended:
            self._mark_step(run, step, "waiting")
            raise
        except DeployerError:
            self._mark_step(run, step, "failed")
            raise
        self._mark_step(run, step, "done")

    def _node_done(self, run: RunRecord, kind: str, node: str, prefix: str) -> bool:
        step = run.steps.get(prefix + node)
        if step is not None:
            return step == "done"
        state = self.record.nodes[node].state
        return state == NodeState.STARTED if kind == "deploy" else state in (NodeState.INITIAL, NodeState.DELETED)

    def recorded_error(self, run: RunRecord, step: str) -> RecordedFailure:
        """The failure an earlier call recorded for a step (its failed operation's error)."""
        for rec in run.ops.values():
            mine = rec.step is not None and (rec.step == step or rec.step.startswith(step + "#"))
            if mine and rec.status == "failed":
                return RecordedFailure(rec.error or f"{step} failed", node=rec.node, operation=rec.operation)
        return RecordedFailure(f"{step} failed")

    def execute_plan(self, run: RunRecord, plan: Plan, only: set[str] | None = None, prefix: str = "") -> None:
        """Run a plan's nodes on the worker pool, respecting dependencies.

        Raises :class:`Suspended` when some node waits (after running everything that does not
        depend on it), :class:`Cancelled` on a cancel request, the failure(s) otherwise.
        """
        names = [n for w in plan.waves for n in w if only is None or n in only]
        done = {
            n for n in plan.nodes if (only is not None and n not in only) or self._node_done(run, plan.kind, n, prefix)
        }
        errors = self._earlier_failures(run, names, done, prefix)
        pending = [n for n in names if n not in done]
        failed_before = bool(errors)
        wakes: list[float] = []
        cancelled = False
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="deployer") as pool:
            while pending or running:
                if not errors and not cancelled:
                    for n in list(pending):
                        if all(w in done for w in plan.nodes[n].waits_for):
                            pending.remove(n)
                            running[pool.submit(self.run_node, run, plan.nodes[n], plan.kind, prefix)] = n
                elif failed_before and not running:
                    # An earlier call failed a node: only nodes already waiting may still finish.
                    for n in list(pending):
                        if run.steps.get(prefix + n) == "waiting":
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
                    elif isinstance(exc, Suspended):
                        wakes.append(exc.wake_at)
                    elif isinstance(exc, Cancelled):
                        cancelled = True
                    elif isinstance(exc, DeployerError):
                        errors.append(exc)
                    else:
                        raise exc
        self._plan_outcome(cancelled, wakes, errors, pending)

    def _earlier_failures(self, run: RunRecord, names: list[str], done: set[str], prefix: str
                          ) -> list[DeployerError]:
        """Failures of earlier calls of this run: they stay failures (unless retrying failed ones),
        and their nodes count as done (nothing new starts anyway while errors exist)."""
        errors: list[DeployerError] = []
        if self._retry_failed:
            return errors
        for n in names:
            if n not in done and run.steps.get(prefix + n) == "failed":
                errors.append(self.recorded_error(run, prefix + n))
                done.add(n)
        return errors

    @staticmethod
    def _plan_outcome(cancelled: bool, wakes: list[float], errors: list[DeployerError], pending: list[str]) -> None:
        """Raise what a plan's end means: cancelled, suspended, failed, or nodes left undone."""
        if cancelled:
            raise Cancelled()
        if wakes:
            raise Suspended(min(wakes))
        if errors:
            raise errors[0] if len(errors) == 1 else AggregatedOperationError(errors)
        if pending:
            raise DeployerError(f"nodes left undone: {', '.join(pending)}")

    # -- workflows ------------------------------------------------------------------------------

    def _guard(self, resume: bool, workflow: str, reopen: bool = False) -> RunRecord | None:
        last = self.record.last_run()
        if last is not None and last.status in ("running", "waiting") and not resume:
            what = "was interrupted" if last.status == "running" else "is waiting for operations to end"
            raise StateError(
                f"the {last.workflow} run {last.id} of {self.deployment_id} {what}",
                hint="continue it with resume (--resume), or cancel it",
            )
        return self._resumable(workflow, resume, reopen)

    def deploy(self, *, resume: bool = False, blocking: bool = True, run_id: str | None = None) -> RunRecord:
        """Run the install workflow (or continue an interrupted or waiting one with ``resume``)."""
        run = self._guard(resume, "install") or self._new_run("install", run_id=run_id)
        return self._drive(run, lambda: self.execute_plan(run, deploy_plan(self.topology)), "deployed",
                           blocking=blocking, busy_status="deploying")

    def undeploy(self, *, resume: bool = False, blocking: bool = True, run_id: str | None = None) -> RunRecord:
        """Run the uninstall workflow, dependants first."""
        run = self._guard(resume, "uninstall") or self._new_run("uninstall", run_id=run_id)
        return self._drive(run, lambda: self.execute_plan(run, undeploy_plan(self.topology)), "undeployed",
                           blocking=blocking, busy_status="undeploying")

    def run_workflow(
        self,
        name: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
        blocking: bool = True,
        run_id: str | None = None,
        reopen: bool = False,
    ) -> RunRecord:
        """Run an imperative workflow (install and uninstall map to deploy and undeploy).

        On resume, the run's recorded inputs are used again (``inputs`` may add the secret ones,
        which are never recorded). ``reopen`` lets a resume take up a cancelled run too: its
        cancelled and failed operations are tried again (what finished is kept).
        """
        from deployer.workflows import WorkflowRunner

        if name == "install":
            return self.deploy(resume=resume, blocking=blocking, run_id=run_id)
        if name == "uninstall":
            return self.undeploy(resume=resume, blocking=blocking, run_id=run_id)
        runner = WorkflowRunner(self, name)
        secret = self.topology.secret_inputs() | {n for n, d in runner.workflow.inputs.items() if d.secret}
        existing = self._guard(resume, name, reopen)
        given = {**(existing.inputs if existing else {}), **(inputs or {})}
        new_id = existing.id if existing else check_id(run_id, "run id") if run_id else self._next_run_id()
        provided = {"run_id": new_id, "deployment_id": self.deployment_id}
        for input_name, decl in runner.workflow.inputs.items():
            if decl.provided is not None:  # the engine's value, whatever the caller passed
                given[input_name] = provided[decl.provided]
        resolved = runner.resolve_inputs(given)
        self._add_secrets(resolved, secret)
        run = existing or self._new_run(name, resolved, run_id=new_id, secret=secret)
        return self._drive(run, lambda: runner.run(run, resolved), None, blocking=blocking)

    def resume(self, run_id: str | None = None, *, blocking: bool = False,
               inputs: Mapping[str, Any] | None = None) -> RunRecord:
        """Continue a run (by default the last one) whatever its workflow: what a worker calls."""
        run = self.record.run(run_id) if run_id else self.record.last_run()
        if run is None:
            raise StateError(f"deployment {self.deployment_id} has no run {run_id or ''}".strip())
        if run.terminal and run.status != "failed":
            return run
        if self.record.last_run(run.workflow) is not run:
            raise StateError(f"run {run.id} is not the last {run.workflow} run of {self.deployment_id}")
        if run.status == "failed":
            return run  # a failed run is retried only on explicit request (deploy/run_workflow with resume)
        return self.run_workflow(run.workflow, inputs, resume=True, blocking=blocking)

    def _add_secrets(self, values: Mapping[str, Any], names: set[str]) -> None:
        extra = tuple(str(v) for k, v in values.items() if k in names and v not in (None, ""))
        self._secrets = tuple(dict.fromkeys(self._secrets + extra))

    def _drive(
        self,
        run: RunRecord,
        body: Callable[[], None],
        success_status: str | None,
        *,
        blocking: bool = True,
        busy_status: str | None = None,
    ) -> RunRecord:
        self._blocking = blocking
        with self.store.lock():
            self._driving = True
            try:
                return self._drive_locked(run, body, success_status, busy_status)
            finally:
                self._driving = False
                self._last_wait.clear()

    def _drive_locked(
        self, run: RunRecord, body: Callable[[], None], success_status: str | None, busy_status: str | None
    ) -> RunRecord:
        with self._lock:
            run.status = "running"
            run.wake_at = None
            run.calls += 1
            if busy_status is not None:
                self.record.status = busy_status  # type: ignore[assignment]
            self._commit()
        if run.cancel_requested or self._cancel_wanted():
            return self._cancel_run(run)
        self._emit(Event("run", message=f"{run.workflow} {run.id} {'resumed' if run.calls > 1 else 'started'}"))
        try:
            body()
        except Suspended as sus:
            with self._lock:
                run.status = "waiting"
                run.wake_at = sus.wake_at
                self._commit()
            self._emit(Event("run", message=f"{run.workflow} {run.id} waiting",
                             seconds=max(0.0, sus.wake_at - time.time())))
            return run
        except Cancelled:
            return self._cancel_run(run)
        except BaseException as exc:
            self._finish_run(run, exc)
            if success_status is not None:
                with self._lock:
                    self.record.status = "failed"
                    self._commit()
            if self._blocking or not isinstance(exc, DeployerError):
                raise
            return run
        self._finish_run(run, None)
        if success_status is not None:
            with self._lock:
                self.record.status = success_status  # type: ignore[assignment]
                self._commit()
        return run

    # -- cancel ---------------------------------------------------------------------------------

    def cancel(self, run_id: str | None = None) -> RunRecord:
        """Cancel a run (by default the last one): its running and waiting operations are cancelled
        through their executors, the run and they end ``cancelled``.

        Idempotent; a run already done or failed is returned unchanged. Called while another
        thread drives this engine, it only requests the cancel (that thread does it and returns
        the cancelled run). When an executor's cancel fails, the run keeps ``cancel_requested``
        (a resume cancels again instead of advancing) and the error is raised.
        """
        run = self.record.run(run_id) if run_id else self.record.last_run()
        if run is None:
            raise StateError(f"deployment {self.deployment_id} has no run {run_id or ''}".strip())
        if run.terminal:
            return run
        if self._driving:
            self._cancel.set()
            return run
        with self.store.lock():
            return self._cancel_run(run)

    def _find_op(self, node: str, op_key: str) -> OperationDef | None:
        template = self.topology.nodes.get(node)
        if template is None:
            return None
        if op_key in template.operations:
            return template.operations[op_key]
        for req in template.requirements:
            if op_key in req.operations:
                return req.operations[op_key]
        return None

    def _cancel_run(self, run: RunRecord) -> RunRecord:
        with self._lock:
            run.cancel_requested = True
            self._commit()
        self._emit(Event("run", message=f"{run.workflow} {run.id} cancelling"))
        failures: list[str] = []
        for key, rec in list(run.ops.items()):
            if rec.status not in ACTIVE_OP_STATUSES:
                continue
            try:
                self._cancel_op(run, key, rec)
            except Exception as exc:  # every operation gets its cancel attempt
                failures.append(f"{key}: {exc}")
                log.warning("cancel of %s failed: %s", key, exc)
                continue
            with self._lock:
                rec.status = "cancelled"
                rec.finished_at = time.time()
                rec.wake_at = None
                self._commit()
            self._emit(Event("op_cancelled", node=rec.node, op=rec.operation, message=key))
        if failures:
            raise DeployerError(
                f"cancel of run {run.id} incomplete: {'; '.join(failures)}",
                hint="cancel again (or resume the run: it cancels instead of advancing)",
            )
        with self._lock:
            for step, value in run.steps.items():
                if value in ("running", "waiting"):
                    run.steps[step] = "cancelled"
            wf = self.topology.workflows.get(run.workflow)
            if wf is not None:
                for name in wf.steps:
                    run.steps.setdefault(f"{wf.name}.{name}", "skipped")
            run.status = "cancelled"
            run.error = "cancelled"
            run.finished_at = time.time()
            run.wake_at = None
            if run.workflow in ("install", "uninstall"):
                self.record.status = "cancelled"
            self._commit()
        self._emit(Event("run", message=f"{run.workflow} {run.id} cancelled"))
        return run

    def _cancel_op(self, run: RunRecord, key: str, rec: OpRecord) -> None:
        if rec.node is None or rec.operation is None:
            return
        op = self._find_op(rec.node, rec.operation)
        if op is None or op.implementation is None:
            return
        executor = self.executors.lookup(op.implementation.artifact_type)
        if executor is None or not is_suspendable(executor):
            return  # a blocking operation cannot be stopped from here; it is only marked
        request = self._request(
            run,
            key,
            rec.node,
            op,
            runs_on=rec.runs_on or rec.node,
            ctx=Context(node=rec.node),
            memo=rec.memo,
            extra_inputs=run.inputs,
            step=rec.step,
            attempt=rec.attempts,
            lenient=True,
        )
        executor.cancel(request, _Hooks(self, run, key, rec.node))  # type: ignore[union-attr]

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
