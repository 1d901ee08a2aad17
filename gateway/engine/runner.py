"""Advancing one deployment or one execution by one step of the deployer, without blocking.

``advance_*`` run while the worker holds the record's lease. They load the workflow version's
bundle, bind the site and SSH-key inputs, and call the deployer in non-blocking mode: operations
that wait (a Slurm job, a pipeline run) are recorded as waiting and the call returns with the
time to look again. The record's state, steps, outputs and ``wake_at`` are then persisted.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from deployer.credentials import CredentialResolver
from deployer.engine import Engine
from deployer.loader import open_package
from deployer.model import Topology
from deployer.state import DeploymentRecord, RunRecord
from deployer.validate import load_topology
from gateway.engine.store import DbStateStore, LogSink
from gateway.persistence.models import (
    Deployment,
    DeploymentState,
    Execution,
    ExecutionState,
    Site,
    WorkflowVersion,
    utcnow,
)
from gateway.services.sites import work_dir_for
from gateway.services.ssh_keys import resolver_for
from gateway.services.workflows import DEPLOY_BINDINGS, RUN_BINDINGS
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
RETRY_AFTER_ERROR = timedelta(seconds=30)


@dataclass
class Outcome:
    """What a worker does with the record after a step."""

    wake_at: datetime | None


def _site_values(site: Site, login: str, owner_id: str, key_id: str, work_dir: str | None = None,
                 software_dir: str | None = None) -> dict[str, Any]:
    return {
        "software_dir": software_dir,
        "login_host": site.login_host,
        "port": site.port,
        "host_key": site.host_key,
        "username": login,
        "credential": f"{owner_id}/{key_id}",
        "work_dir": work_dir or work_dir_for(site, login),
    }


def software_dir_for(site: Site, login: str, deployment_id: str) -> str:
    """Where a deployment installs software (images): in the developer's work dir, in a folder that
    site preparation makes readable by every site user who invokes it (see site_prepare.yml)."""
    return f"{work_dir_for(site, login)}/software/{deployment_id}"


def bind_inputs(declared: dict[str, Any], given: dict[str, Any], site: Site, deployer_login: str,
                deployer_owner: str, deployer_key: str, deployment_id: str,
                runner: tuple[str, str, str, str] | None = None) -> dict[str, Any]:
    """Topology inputs: the given ones, plus the site and credential inputs the topology declares.

    Deploy-time inputs (``login_host``, ``port``, ``host_key``, ``username``, ``credential``,
    ``work_dir``, ``software_dir``) come from the deployment's site and the developer's key.
    ``runner`` (login, owner id, key id, work dir) binds the ``run_*`` inputs for an execution;
    for a deployment they take the developer's values.
    """
    values = dict(given)
    deploy = _site_values(site, deployer_login, deployer_owner, deployer_key,
                          software_dir=software_dir_for(site, deployer_login, deployment_id))
    for name in DEPLOY_BINDINGS:
        if name in declared:
            values[name] = deploy[name]
    if runner is not None:
        login, owner, key, work_dir = runner
        run = _site_values(site, login, owner, key, work_dir)
    else:
        # At deploy time the run-side nodes get a folder of their own, so preparing them never
        # changes the mode of the developer's work dir (which holds the shared software dir).
        run = _site_values(site, deployer_login, deployer_owner, deployer_key,
                           f"{deploy['work_dir']}/executions/{deployment_id}")
    for name in RUN_BINDINGS:
        if name in declared:
            values[name] = run[name.removeprefix("run_")]
    return values


def _epoch_to_dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


def _op_view(name: str, ops: list[Any], state: str) -> dict[str, Any]:
    memo: dict[str, Any] = {}
    for op in ops:
        memo.update(op.memo or {})
    return {
        "name": name,
        "state": state,
        "started_at": min((op.started_at for op in ops), default=None),
        "finished_at": max((op.finished_at for op in ops if op.finished_at), default=None)
        if ops and all(op.finished_at for op in ops) else None,
        "attempts": sum(op.attempts for op in ops),
        "job_id": memo.get("job_id"),
        "pipeline_run_id": memo.get("dag_run_id") or memo.get("pipeline_run_id"),
        "image_build_id": memo.get("image_build_id"),
        "error": next((op.error for op in ops if op.error), None),
        # A service away: what the step waits for, and since when (epoch seconds).
        "waiting_for": memo.get("transient_reason") if state == "waiting" else None,
        "waiting_since": memo.get("transient_since") if state == "waiting" else None,
    }


def _steps(run: RunRecord | None) -> list[dict[str, Any]]:
    """Progress for the API: one entry per workflow step (its operations' job and pipeline run ids,
    timings, error), or per operation for install and uninstall runs."""
    if run is None:
        return []
    if run.steps:
        prefix = f"{run.workflow}."
        return [_op_view(step.removeprefix(prefix), list(run.ops_of_step(step).values()), status)
                for step, status in run.steps.items()]
    return [_op_view(key, [op], op.status) for key, op in run.ops.items()]


class TopologyCache:
    """Parsed topologies by (bundle folder, inputs): a poll of a waiting run must not re-read and
    re-validate the template each time (that was most of a poll's CPU). Registered bundles are
    immutable, so an entry never goes stale; CSAR bundles (extracted per use) are not cached."""

    def __init__(self, size: int = 128) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[Topology, dict[str, Any]]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    @contextmanager
    def load(self, bundle: str, inputs: dict[str, Any]) -> Iterator[tuple[Topology, dict[str, Any]]]:
        """The topology and resolved inputs of ``bundle`` with ``inputs``."""
        if not Path(bundle).is_dir():
            with open_package(bundle) as package:
                yield load_topology(package, inputs)
            return
        key = (bundle, json.dumps(inputs, sort_keys=True, default=str))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
        if hit is None:
            with open_package(bundle) as package:
                hit = load_topology(package, inputs)
            with self._lock:
                self._entries[key] = hit
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        yield hit


class Runner:
    """Advances deployments and executions (one call = as far as possible without waiting)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, vault: Vault, owner: str) -> None:
        self.sessions, self.settings, self.vault, self.owner = sessions, settings, vault, owner
        self.topologies = TopologyCache()

    def _resolver(self, acting_user: str, site: Site, label: str) -> CredentialResolver:
        return resolver_for(self.vault, acting_user, site, label, self.settings.ssh_certificate_ttl)

    # -- deployments --------------------------------------------------------------------------

    def advance_deployment(self, deployment_id: str) -> Outcome:
        with self.sessions() as db:
            deployment = db.get(Deployment, deployment_id)
            if deployment is None:
                return Outcome(None)
            version = db.get(WorkflowVersion, deployment.version_id)
            site = db.get(Site, deployment.site_id)
            assert version is not None and site is not None
            undeploy = deployment.target == "undeployed"
            if deployment.state in (DeploymentState.PENDING, DeploymentState.DEPLOYED, DeploymentState.FAILED):
                deployment.state = DeploymentState.UNDEPLOYING if undeploy else DeploymentState.DEPLOYING
                deployment.error = None
                db.commit()
            inputs = bind_inputs(version.inputs, deployment.inputs, site, deployment.login, deployment.owner_id,
                                 deployment.ssh_key_id, deployment.id)
            bundle, has_record = version.bundle, deployment.record is not None
            credentials = self._resolver(deployment.owner_id, site, f"deployment:{deployment.id}")
            context = {"user_id": deployment.owner_id, "deployment_id": deployment.id,
                       "run_label": f"deployment:{deployment.id}", "site_id": site.id,
                       "site": site.name, "ssh_key_id": deployment.ssh_key_id, "login": deployment.login}
        sink = LogSink(self.sessions, deployment_id)
        store = DbStateStore(self.sessions, Deployment, deployment_id, self.owner)
        try:
            with self.topologies.load(bundle, inputs) as (topology, resolved):
                engine = Engine(topology, store, deployment_id=deployment_id, inputs=resolved,
                                workers=self.settings.engine_operation_workers,
                                transient_window=self.settings.engine_transient_window_minutes * 60,
                                credentials=credentials,
                                on_event=sink, context=context)
                if undeploy:
                    run = engine.undeploy(resume=has_record, blocking=False)
                else:
                    run = engine.deploy(resume=has_record, blocking=False)
                outputs = engine.outputs() if run.status == "done" and not undeploy else None
        except HpcwaasError as exc:
            sink.write(f"failed: {exc}", level="error")
            return self._finish_deployment(deployment_id, DeploymentState.FAILED, str(exc))
        if run.status == "waiting":
            return Outcome(_epoch_to_dt(getattr(run, "wake_at", None)) or utcnow() + timedelta(seconds=5))
        if run.status == "done":
            state = DeploymentState.UNDEPLOYED if undeploy else DeploymentState.DEPLOYED
            sink.write(f"{'undeployed' if undeploy else 'deployed'}")
            return self._finish_deployment(deployment_id, state, None, outputs)
        sink.write(f"failed: {run.error}", level="error")
        return self._finish_deployment(deployment_id, DeploymentState.FAILED, run.error)

    def _finish_deployment(self, deployment_id: str, state: DeploymentState, error: str | None,
                           outputs: dict[str, Any] | None = None) -> Outcome:
        with self.sessions() as db:
            deployment = db.get(Deployment, deployment_id)
            if deployment is not None and deployment.lease_owner == self.owner:
                deployment.state = state
                deployment.error = error
                if outputs is not None:
                    deployment.outputs = outputs
                db.commit()
        return Outcome(None)

    # -- executions ---------------------------------------------------------------------------

    def advance_execution(self, execution_id: str) -> Outcome:
        with self.sessions() as db:
            execution = db.get(Execution, execution_id)
            if execution is None or execution.state in (ExecutionState.COMPLETED, ExecutionState.FAILED,
                                                        ExecutionState.CANCELLED):
                return Outcome(None)
            deployment = db.get(Deployment, execution.deployment_id)
            assert deployment is not None
            version = db.get(WorkflowVersion, deployment.version_id)
            site = db.get(Site, deployment.site_id)
            assert version is not None and site is not None
            if execution.state == ExecutionState.PENDING:
                execution.state = ExecutionState.RUNNING
                execution.started_at = utcnow()
                db.commit()
            run_dir = f"{work_dir_for(site, execution.login)}/executions/{execution.id}"
            inputs = bind_inputs(version.inputs, deployment.inputs, site, deployment.login, deployment.owner_id,
                                 deployment.ssh_key_id, deployment.id,
                                 runner=(execution.login, execution.owner_id, execution.ssh_key_id, run_dir))
            initial = None
            if execution.record is None and deployment.record is not None:
                # An execution starts from the deployment's installed state, in a record of its own.
                initial = DeploymentRecord.model_validate(deployment.record)
                initial.id, initial.runs = execution.id, []
            bundle, cancel = version.bundle, execution.cancel_requested
            credentials = self._resolver(execution.owner_id, site, f"execution:{execution.id}")
            context = {"user_id": execution.owner_id, "execution_id": execution.id,
                       "run_label": f"execution:{execution.id}", "deployment_id": deployment.id,
                       "site_id": site.id, "site": site.name, "ssh_key_id": execution.ssh_key_id,
                       "login": execution.login, "run_dir": run_dir}
            workflow_name, workflow_inputs = execution.tosca_workflow, dict(execution.inputs)
        sink = LogSink(self.sessions, execution_id)
        store = DbStateStore(self.sessions, Execution, execution_id, self.owner, initial)
        try:
            with self.topologies.load(bundle, inputs) as (topology, resolved):
                engine = Engine(topology, store, deployment_id=execution_id, inputs=resolved,
                                workers=self.settings.engine_operation_workers,
                                transient_window=self.settings.engine_transient_window_minutes * 60,
                                credentials=credentials,
                                on_event=sink, context=context, cancel_check=lambda: self._cancel_wanted(execution_id))
                if cancel:
                    run = engine.record.last_run(workflow_name)
                    if run is not None:
                        run = engine.cancel(run.id)
                    sink.write("cancelled")
                    return self._finish_execution(execution_id, ExecutionState.CANCELLED, None, _steps(run), None)
                resume = engine.record.last_run(workflow_name) is not None
                # Not being cancelled: a cancelled engine run was reopened by a resume request.
                run = engine.run_workflow(workflow_name, workflow_inputs, resume=resume, blocking=False, reopen=True)
                outputs = engine.outputs() if run.status == "done" else None
        except HpcwaasError as exc:
            sink.write(f"failed: {exc}", level="error")
            return self._finish_execution(execution_id, ExecutionState.FAILED, str(exc), None, None)
        steps = _steps(run)
        if run.status == "waiting":
            with self.sessions() as db:
                current = db.get(Execution, execution_id)
                if current is not None:
                    current.steps = steps
                    db.commit()
            return Outcome(_epoch_to_dt(getattr(run, "wake_at", None)) or utcnow() + timedelta(seconds=2))
        if run.status == "done":
            sink.write("completed")
            return self._finish_execution(execution_id, ExecutionState.COMPLETED, None, steps, outputs)
        if run.status == "cancelled":
            return self._finish_execution(execution_id, ExecutionState.CANCELLED, None, steps, None)
        sink.write(f"failed: {run.error}", level="error")
        return self._finish_execution(execution_id, ExecutionState.FAILED, run.error, steps, None)

    def _cancel_wanted(self, execution_id: str) -> bool:
        with self.sessions() as db:
            return bool(db.scalar(select(Execution.cancel_requested).where(Execution.id == execution_id)))

    def _finish_execution(self, execution_id: str, state: ExecutionState, error: str | None,
                          steps: list[dict[str, Any]] | None, outputs: dict[str, Any] | None) -> Outcome:
        with self.sessions() as db:
            execution = db.get(Execution, execution_id)
            if execution is not None and execution.lease_owner == self.owner:
                if execution.cancel_requested and state != ExecutionState.COMPLETED:
                    state = ExecutionState.CANCELLED
                execution.state = state
                execution.error = error
                if steps is not None:
                    execution.steps = steps
                if outputs is not None:
                    execution.outputs = outputs
                execution.finished_at = utcnow()
                db.commit()
        return Outcome(None)
