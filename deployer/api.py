"""Plain functions behind the CLI (and usable by the gateway): validate, plan, deploy, ...

Each opens the template package, builds the topology, does its work and cleans up. Adapters
(the typer CLI, REST routes) only parse arguments and print.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from deployer.credentials import CredentialProvider, VaultCredentialProvider
from deployer.engine import Engine, EventSink
from deployer.errors import StateError
from deployer.loader import open_package
from deployer.model import Topology
from deployer.plan import Plan, deploy_plan, undeploy_plan
from deployer.state import DeploymentRecord, FolderStateStore, RunRecord, StateStore
from deployer.validate import load_topology
from hpcwaas.settings import get_settings


def default_credentials() -> CredentialProvider:
    """Keys from the Vault configured in the hpcwaas settings."""
    from hpcwaas.vault import Vault

    return VaultCredentialProvider(Vault.from_settings(get_settings()))


def deployment_id_for(state_dir: str | os.PathLike[str]) -> str:
    """A default deployment id derived from the state folder's name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(state_dir).resolve().name).strip("-.") or "deployment"
    return name[:64]


@contextlib.contextmanager
def open_engine(
    source: str | os.PathLike[str],
    store: StateStore,
    *,
    deployment_id: str,
    inputs: Mapping[str, Any] | None = None,
    **engine_options: Any,
) -> Iterator[Engine]:
    """An :class:`Engine` over any store (the gateway's DB row), the template opened meanwhile.

    The package stays open (a CSAR extracted) for the ``with`` block: playbooks and artifacts
    are read from it. ``engine_options`` go to :class:`Engine` (workers, credentials, executors,
    on_event, context, cancel_check). Parsing costs ~0.3 s; a caller that polls often may keep a
    package folder and its Topology per workflow version and build ``Engine`` directly.
    """
    with open_package(source) as package:
        topology, resolved = load_topology(package, inputs or {})
        topology.source = str(Path(source).resolve())
        yield Engine(topology, store, deployment_id=deployment_id, inputs=resolved, **engine_options)


def validate_template(
    source: str | os.PathLike[str], inputs: Mapping[str, Any] | None = None, *, check_inputs: bool = True
) -> Topology:
    """Validate a template; raise TemplateError or InputError."""
    with open_package(source) as package:
        topology, _ = load_topology(package, inputs, check_inputs=check_inputs)
    return topology


def make_plan(
    source: str | os.PathLike[str], inputs: Mapping[str, Any] | None = None, *, undeploy: bool = False
) -> Plan:
    """The deploy (or undeploy) plan of a template, without running anything."""
    topology = validate_template(source, inputs, check_inputs=False)
    return undeploy_plan(topology) if undeploy else deploy_plan(topology)


def _stored_inputs(store: StateStore, given: Mapping[str, Any]) -> dict[str, Any]:
    record = store.load()
    merged = dict(record.inputs) if record is not None else {}
    merged.update(given)
    return merged


def _template_of(store: StateStore, source: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
    if source is not None:
        return source
    record = store.load()
    if record is None:
        raise StateError("no deployment in this state folder", hint="deploy first, or pass the template")
    return record.template


def _engine_call(
    action: str,
    source: str | os.PathLike[str] | None,
    store: StateStore,
    *,
    deployment_id: str,
    inputs: Mapping[str, Any] | None,
    workers: int,
    credentials: CredentialProvider | None,
    on_event: EventSink | None,
    resume: bool,
    workflow: str | None = None,
    workflow_inputs: Mapping[str, Any] | None = None,
    blocking: bool = True,
) -> tuple[RunRecord, Engine]:
    template = _template_of(store, source)
    with open_package(template) as package:
        topology, resolved = load_topology(package, _stored_inputs(store, inputs or {}))
        topology.source = str(Path(template).resolve())
        engine = Engine(
            topology,
            store,
            deployment_id=deployment_id,
            inputs=resolved,
            workers=workers,
            credentials=credentials,
            on_event=on_event,
            sandbox=get_settings().deployer_sandbox,
        )
        if action == "deploy":
            run = engine.deploy(resume=resume, blocking=blocking)
        elif action == "undeploy":
            run = engine.undeploy(resume=resume, blocking=blocking)
        elif action == "cancel":
            run = engine.cancel()
        else:
            assert workflow is not None
            run = engine.run_workflow(workflow, workflow_inputs, resume=resume, blocking=blocking)
    return run, engine


def deploy(
    source: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    *,
    deployment_id: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    workers: int = 4,
    resume: bool = False,
    credentials: CredentialProvider | None = None,
    on_event: EventSink | None = None,
    blocking: bool = True,
) -> Engine:
    """Deploy (or resume deploying) a template, keeping state in ``state_dir``."""
    store = FolderStateStore(state_dir)
    _, engine = _engine_call(
        "deploy",
        source,
        store,
        deployment_id=deployment_id or deployment_id_for(state_dir),
        inputs=inputs,
        workers=workers,
        credentials=credentials,
        on_event=on_event,
        resume=resume,
        blocking=blocking,
    )
    return engine


def undeploy(
    state_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    *,
    deployment_id: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    workers: int = 4,
    resume: bool = False,
    credentials: CredentialProvider | None = None,
    on_event: EventSink | None = None,
    blocking: bool = True,
) -> Engine:
    """Undeploy what ``state_dir`` records."""
    store = FolderStateStore(state_dir)
    _, engine = _engine_call(
        "undeploy",
        source,
        store,
        deployment_id=deployment_id or _recorded_id(store, state_dir),
        inputs=inputs,
        workers=workers,
        credentials=credentials,
        on_event=on_event,
        resume=resume,
        blocking=blocking,
    )
    return engine


def run_workflow(
    state_dir: str | os.PathLike[str],
    workflow: str,
    source: str | os.PathLike[str] | None = None,
    *,
    deployment_id: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    workflow_inputs: Mapping[str, Any] | None = None,
    workers: int = 4,
    resume: bool = False,
    credentials: CredentialProvider | None = None,
    on_event: EventSink | None = None,
    blocking: bool = True,
) -> Engine:
    """Run a workflow of a deployment."""
    store = FolderStateStore(state_dir)
    _, engine = _engine_call(
        "run",
        source,
        store,
        deployment_id=deployment_id or _recorded_id(store, state_dir),
        inputs=inputs,
        workers=workers,
        credentials=credentials,
        on_event=on_event,
        resume=resume,
        workflow=workflow,
        workflow_inputs=workflow_inputs,
        blocking=blocking,
    )
    return engine


def cancel_run(
    state_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    *,
    inputs: Mapping[str, Any] | None = None,
    credentials: CredentialProvider | None = None,
    on_event: EventSink | None = None,
) -> RunRecord:
    """Cancel the last run of a deployment: scancel its jobs, cancel its service runs."""
    store = FolderStateStore(state_dir)
    run, _ = _engine_call(
        "cancel",
        source,
        store,
        deployment_id=_recorded_id(store, state_dir),
        inputs=inputs,
        workers=1,
        credentials=credentials,
        on_event=on_event,
        resume=False,
    )
    return run


def _recorded_id(store: StateStore, state_dir: str | os.PathLike[str]) -> str:
    record = store.load()
    return record.id if record is not None else deployment_id_for(state_dir)


def outputs(
    state_dir: str | os.PathLike[str],
    source: str | os.PathLike[str] | None = None,
    *,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The topology outputs of a deployment."""
    store = FolderStateStore(state_dir)
    record = load_record(state_dir)
    with open_package(_template_of(store, source)) as package:
        topology, resolved = load_topology(package, _stored_inputs(store, inputs or {}), check_inputs=False)
        engine = Engine(topology, store, deployment_id=record.id, inputs=resolved)
        return engine.outputs()


def load_record(state_dir: str | os.PathLike[str]) -> DeploymentRecord:
    """The deployment record in ``state_dir`` (StateError when there is none)."""
    record = FolderStateStore(state_dir).load()
    if record is None:
        raise StateError(f"no deployment state in {state_dir}", hint="deploy first")
    return record
