"""Deployments and executions: checked requests in, durable records out.

Nothing here talks to a site: creating a deployment or an execution validates the request and
persists a record the engine (``gateway.engine``) picks up. Inputs are checked against what the
workflow version declares before anything runs, so a typo is a 422 naming the input, not a
failed job an hour later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from catalogue.errors import DatasetNotFound
from data_logistics.errors import DatasetUnresolved, InvalidTransfer
from deployer import constraints
from gateway.core.security import hash_token
from gateway.errors import Conflict, InvalidInput, NotFound, PermissionDenied, QuotaExceeded
from gateway.persistence.models import (
    EXECUTION_TERMINAL,
    ApiToken,
    Deployment,
    DeploymentState,
    Execution,
    ExecutionState,
    LogLine,
    Role,
    SSHKey,
    User,
    Workflow,
    WorkflowVersion,
    utcnow,
)
from gateway.schemas.runs import DeploymentCreate, ExecutionCreate
from gateway.services import pipelines as pipeline_service
from gateway.services import sites as site_service
from gateway.services import ssh_keys as key_service
from gateway.services import users as user_service
from gateway.services import workflows as workflow_service

RESERVED = workflow_service.BOUND_INPUTS  # callers may not set them

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "float": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "map": (dict,),
}


def check_inputs(declared: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any], where: str,
                 reserved: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check given values against declared inputs; 422 naming the first bad input."""
    for name in given:
        if name in reserved and name in declared:
            raise InvalidInput(f"input {name!r} is set by the gateway from the site and your SSH key",
                               field=f"inputs.{name}")
        if declared.get(name, {}).get("secret"):
            # A value in the request would be stored with the deployment or execution (and shown
            # back): secrets reach jobs from Vault only, as the SSH credentials do.
            raise InvalidInput(f"input {name!r} of {where} is secret: the gateway does not take secret values "
                               "in a request, which it would store", field=f"inputs.{name}",
                               hint="leave it out: the only secrets a job gets are the SSH credentials the "
                                    "gateway binds from Vault (credential, run_credential); a workflow that "
                                    "needs another one cannot take it through the gateway")
        if declared.get(name, {}).get("provided"):
            raise InvalidInput(f"input {name!r} is set by the engine for each run", field=f"inputs.{name}",
                               hint="leave it out")
        if name not in declared:
            known = ", ".join(sorted(n for n in declared if n not in reserved)) or "none"
            raise InvalidInput(f"{where} has no input {name!r}", hint=f"its inputs are: {known}",
                               field=f"inputs.{name}")
    for name, spec in declared.items():
        if name in reserved or spec.get("provided"):
            continue
        if name not in given:
            if spec.get("required") and spec.get("default") is None and not spec.get("secret"):
                raise InvalidInput(f"input {name!r} of {where} is required",
                                   hint=spec.get("description") or f"give it as inputs.{name}",
                                   field=f"inputs.{name}")
            continue
        expected = _TYPES.get(str(spec.get("type", "string")))
        value = given[name]
        bad_bool = isinstance(value, bool) and expected is not None and bool not in expected
        if expected is not None and (not isinstance(value, expected) or bad_bool):
            kind = str(spec.get("type"))
            raise InvalidInput(f"input {name!r} of {where} must be {_article(kind)} {kind}, "
                               f"not {_article(type(value).__name__)} {type(value).__name__}",
                               field=f"inputs.{name}",
                               hint=f"send it as a JSON string (with the CLI: -i '{name}=\"{value}\"')"
                               if kind == "string" else None)
        broken = constraints.violation(spec.get("constraints") or [], value)
        if broken is not None:
            raise InvalidInput(f"input {name!r} of {where} {broken}, not {value!r}", field=f"inputs.{name}")
    return dict(given)


def check_datasets(db: Session, declared: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Any], where: str, *,
                   user_id: str, username: str, admin: bool, storage_root: Path | None = None) -> None:
    """Inputs a stage-in takes its dataset from must name a catalogue dataset the caller can read
    and that has a location (with ``storage_root``: a file location in its owner's folder, as the
    stage-in will check); 422 naming the input otherwise (a URL is left to the pipeline)."""
    wanted = [(name, value) for name, spec in declared.items()
              if spec.get("catalogue_dataset") and isinstance(value := inputs.get(name, spec.get("default")), str)
              and "://" not in value and not value.startswith("file:")]
    for name, value in wanted:
        dataset_id = value.removeprefix("dataset:")
        try:
            url, _, owner = pipeline_service.resolve_dataset(db, user_id, username, admin, dataset_id)
            if storage_root is not None and url.startswith("file:"):
                pipeline_service.owned_file(storage_root, owner, url.removeprefix("file:"), f"dataset {dataset_id!r}")
        except (DatasetUnresolved, InvalidTransfer) as exc:
            raise InvalidInput(f"input {name!r} of {where}: {exc.message}", hint=exc.hint,
                               field=f"inputs.{name}") from exc
        except DatasetNotFound as exc:
            raise InvalidInput(f"input {name!r} of {where} names no catalogue dataset you can read: {dataset_id!r}",
                               hint="find one with 'waas catalogue search'", field=f"inputs.{name}") from exc


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _visible_version(db: Session, user: User, workflow_ref: str, number: int | None) -> WorkflowVersion:
    workflow = workflow_service.get_visible(db, user, workflow_ref)
    return workflow_service.version_of(workflow, number)


def create_deployment(db: Session, user: User, data: DeploymentCreate) -> Deployment:
    """Accept a deployment request; the engine installs it."""
    version = _visible_version(db, user, data.workflow, data.version)
    site = site_service.get(db, data.site)
    key = key_service.get_owned(db, user, data.ssh_key)
    login = key_service.resolve_login(key, data.login)
    inputs = check_inputs(version.inputs, data.inputs, f"workflow {version.workflow.name!r}", RESERVED)
    deployment = Deployment(workflow_id=version.workflow_id, version_id=version.id, site_id=site.id,
                            owner_id=user.id, ssh_key_id=key.id, login=login, inputs=inputs,
                            state=DeploymentState.PENDING, target="deployed", wake_at=utcnow())
    db.add(deployment)
    db.commit()
    return deployment


def get_deployment(db: Session, user: User, deployment_id: str, *, manage: bool = False) -> Deployment:
    """A deployment the user may see: of a workflow visible to them (owner/admin to manage)."""
    deployment = db.get(Deployment, deployment_id)
    workflow = db.get(Workflow, deployment.workflow_id) if deployment is not None else None
    # A deployment of a hidden workflow is reported exactly like one that does not exist (the
    # hidden workflow's id is not named either).
    if deployment is None or workflow is None or not workflow_service.can_see(workflow, user):
        raise NotFound(f"deployment {deployment_id!r} does not exist",
                       hint="list the deployments you may see with GET /deployments")
    if manage and deployment.owner_id != user.id and user.role != Role.ADMIN:
        raise PermissionDenied("only the deployment's owner or an admin may change it")
    return deployment


def list_deployments(db: Session, user: User, workflow: str | None = None) -> list[Deployment]:
    """Deployments of the workflows the user may see, newest first."""
    query = (select(Deployment, Workflow).join(Workflow, Workflow.id == Deployment.workflow_id)
             .order_by(Deployment.created_at.desc()))
    if workflow is not None:
        query = query.where(Deployment.workflow_id == workflow_service.get_visible(db, user, workflow).id)
    return [d for d, w in db.execute(query).all() if workflow_service.can_see(w, user)]


def undeploy(db: Session, user: User, deployment_id: str) -> Deployment:
    """Ask the engine to run the uninstall workflow."""
    deployment = get_deployment(db, user, deployment_id, manage=True)
    if deployment.state == DeploymentState.UNDEPLOYED:
        return deployment
    busy = db.scalar(select(Execution.id).where(Execution.deployment_id == deployment.id,
                                                Execution.state.not_in(EXECUTION_TERMINAL)).limit(1))
    if busy is not None:
        raise Conflict(f"execution {busy} of this deployment is still running", hint="cancel it or wait")
    deployment.target = "undeployed"
    deployment.wake_at = utcnow()
    db.commit()
    return deployment


# Built once (statement construction showed up in the invoke profile): the deployments ready to
# run a workflow, newest first, with the TOSCA workflows their version declares.
_READY_DEPLOYMENTS = (select(Deployment, WorkflowVersion.workflows)
                      .join(WorkflowVersion, WorkflowVersion.id == Deployment.version_id)
                      .where(Deployment.workflow_id == bindparam("workflow_id"),
                             Deployment.state == DeploymentState.DEPLOYED, Deployment.target == "deployed")
                      .order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(1))


def _pick_deployment(db: Session, user: User, workflow_id: str,
                     data: ExecutionCreate) -> tuple[Deployment, dict[str, Any]]:
    """The deployment to run and the TOSCA workflows its version declares (one query when picked)."""
    # Mirrored by _fast_execution for the ordinary case: a check added here belongs there too.
    if data.deployment is not None:
        deployment = get_deployment(db, user, data.deployment)
        if deployment.workflow_id != workflow_id:
            raise InvalidInput(f"deployment {data.deployment!r} is not a deployment of this workflow",
                               field="deployment")
        declared = db.scalar(select(WorkflowVersion.workflows).where(WorkflowVersion.id == deployment.version_id))
    else:
        query = _READY_DEPLOYMENTS
        if data.site is not None:
            query = query.where(Deployment.site_id == site_service.get(db, data.site).id)
        found = db.execute(query, {"workflow_id": workflow_id}).first()
        if found is None:
            where = f" on site {data.site!r}" if data.site else ""
            raise Conflict(f"this workflow has no deployment{where} ready to run",
                           hint="ask its developer to deploy it (waas workflows deploy)")
        deployment, declared = found
    if deployment.state != DeploymentState.DEPLOYED or deployment.target != "deployed":
        raise Conflict(f"deployment {deployment.id} is {deployment.state.value}, not deployed",
                       hint="wait until it is deployed, or pick another deployment")
    return deployment, dict(declared or {})


_IN_FLIGHT = (select(func.count()).select_from(Execution)
              .where(Execution.owner_id == bindparam("user_id"), Execution.state.not_in(EXECUTION_TERMINAL)))


def _invoke_context() -> Select[Any]:
    """Everything an ordinary invocation checks, as one row per workflow matching the reference.

    Plain Core on the tables: the token and its user, the workflow (by id or name), its newest
    ready deployment with the TOSCA workflows of that version, and the caller's key, in one round
    trip. Read as five ORM queries (with a commit) this was most of the gateway's CPU per invoke
    under load (bench/invoke.py: ~3 of ~5 ms).
    """
    token, user, workflow = ApiToken.__table__.c, User.__table__.c, Workflow.__table__.c
    deployment, version, key = Deployment.__table__.c, WorkflowVersion.__table__.c, SSHKey.__table__.c
    ready = (select(deployment.id)
             .where(deployment.workflow_id == workflow.id, deployment.state == DeploymentState.DEPLOYED,
                    deployment.target == "deployed")
             .order_by(deployment.created_at.desc(), deployment.id.desc()).limit(1)
             .correlate(Workflow.__table__).scalar_subquery())
    execution = Execution.__table__.c
    in_flight = (select(func.count()).select_from(Execution.__table__)
                 .where(execution.owner_id == user.id, execution.state.not_in(list(EXECUTION_TERMINAL)))
                 .correlate(User.__table__).scalar_subquery())
    return (select(token.revoked_at, token.expires_at, token.last_used_at, user.id.label("user_id"),
                   user.username, user.role, user.groups, user.disabled,
                   workflow.id.label("workflow_id"), workflow.name.label("workflow_name"), workflow.visibility,
                   workflow.owner_id, workflow.allowed_users, workflow.allowed_groups,
                   deployment.id.label("deployment_id"), version.workflows,
                   key.id.label("key_id"), key.login.label("key_login"), in_flight.label("in_flight"))
            .select_from(ApiToken.__table__)
            .join(User.__table__, user.id == token.user_id)
            .outerjoin(Workflow.__table__, or_(workflow.id == bindparam("ref"), workflow.name == bindparam("ref")))
            .outerjoin(Deployment.__table__, deployment.id == ready)
            .outerjoin(WorkflowVersion.__table__, version.id == deployment.version_id)
            .outerjoin(SSHKey.__table__, and_(key.id == bindparam("key_id"), key.user_id == user.id))
            .where(token.token_hash == bindparam("token_hash")))


_INVOKE_CONTEXT = _invoke_context()  # built once: building costs more than running it


def accept_invocation(db: Session, token: str, workflow_ref: str, data: ExecutionCreate,
                      storage_root: Path | None = None, max_in_flight: int | None = None) -> Execution:
    """Authenticate and check an invocation: ``new_execution`` as the token's user, in one query
    when all is in order (the common case); anything unusual (an error to report, a token whose
    last use is to be recorded, a chosen deployment or site) takes the full path, which is the
    reference for every answer."""
    fast = _fast_execution(db, token, workflow_ref, data, storage_root, max_in_flight)
    return fast if fast is not None else new_execution(db, user_service.authenticate(db, token), workflow_ref, data,
                                                       storage_root, max_in_flight)


def _fast_execution(db: Session, token: str, workflow_ref: str, data: ExecutionCreate,
                    storage_root: Path | None = None, max_in_flight: int | None = None) -> Execution | None:
    if data.deployment is not None or data.site is not None:
        return None
    rows = db.execute(_INVOKE_CONTEXT, {"token_hash": hash_token(token), "ref": workflow_ref,
                                        "key_id": data.ssh_key}).all()
    # A name equal to another workflow's id: the id wins, as in workflows.get_visible.
    row = next((r for r in rows if r.workflow_id == workflow_ref), rows[0] if rows else None)
    if row is None or row.workflow_id is None or row.deployment_id is None or row.key_id is None:
        return None
    if max_in_flight is not None and row.in_flight >= max_in_flight:
        return None  # the full path says so
    now = utcnow()
    if not user_service.accepted_as_is(row.revoked_at, row.expires_at, row.last_used_at, row.disabled, now):
        return None
    if not workflow_service.visible(row.visibility, owner_id=row.owner_id, allowed_users=row.allowed_users,
                                    allowed_groups=row.allowed_groups, user_id=row.user_id,
                                    username=row.username, role=row.role, groups=row.groups):
        return None
    declared = (row.workflows or {}).get(data.tosca_workflow)
    if declared is None or not row.key_login:
        return None
    login = key_service.site_account(row.key_login, data.login)
    where = f"{row.workflow_name}/{data.tosca_workflow}"
    inputs = check_inputs(declared.get("inputs", {}), data.inputs, where)
    check_datasets(db, declared.get("inputs", {}), inputs, where, user_id=row.user_id, username=row.username,
                   admin=row.role == Role.ADMIN, storage_root=storage_root)
    return Execution(workflow_id=row.workflow_id, deployment_id=row.deployment_id, owner_id=row.user_id,
                     ssh_key_id=row.key_id, login=login, workflow_name=row.workflow_name,
                     tosca_workflow=data.tosca_workflow, inputs=inputs,
                     state=ExecutionState.PENDING, wake_at=now)


def create_execution(db: Session, user: User, workflow_ref: str, data: ExecutionCreate,
                     storage_root: Path | None = None) -> Execution:
    """Accept an invocation and persist it (the REST route batches the insert instead)."""
    execution = new_execution(db, user, workflow_ref, data, storage_root)
    db.add(execution)
    db.commit()
    return execution


def new_execution(db: Session, user: User, workflow_ref: str, data: ExecutionCreate,
                  storage_root: Path | None = None, max_in_flight: int | None = None) -> Execution:
    """A checked, not yet persisted invocation: inputs checked, caller's own key, a deployed deployment,
    and the caller under the operator's limit of executions in flight."""
    # Mirrored by _fast_execution (one query) for the ordinary case: keep the two in step.
    if max_in_flight is not None:
        in_flight = db.scalar(_IN_FLIGHT.params(user_id=user.id)) or 0
        if in_flight >= max_in_flight:
            raise QuotaExceeded(f"you have {in_flight} executions not yet ended; this gateway runs at most "
                                f"{max_in_flight} at once for one person",
                                hint="wait for some to end, or cancel some (waas executions cancel <id>)")
    workflow = workflow_service.get_visible(db, user, workflow_ref)
    deployment, workflows = _pick_deployment(db, user, workflow.id, data)
    declared = workflows.get(data.tosca_workflow)
    if declared is None:
        raise InvalidInput(f"workflow {workflow.name!r} has no TOSCA workflow {data.tosca_workflow!r}",
                           hint=f"it has: {', '.join(sorted(workflows)) or 'none'}",
                           field="tosca_workflow")
    where = f"{workflow.name}/{data.tosca_workflow}"
    inputs = check_inputs(declared.get("inputs", {}), data.inputs, where)
    check_datasets(db, declared.get("inputs", {}), inputs, where, user_id=user.id, username=user.username,
                   admin=user.role == Role.ADMIN, storage_root=storage_root)
    key = key_service.get_owned(db, user, data.ssh_key)
    login = key_service.resolve_login(key, data.login)
    return Execution(workflow_id=workflow.id, deployment_id=deployment.id, owner_id=user.id,
                     ssh_key_id=key.id, login=login, workflow_name=workflow.name,
                     tosca_workflow=data.tosca_workflow, inputs=inputs,
                     state=ExecutionState.PENDING, wake_at=utcnow())


def get_execution(db: Session, user: User, execution_id: str) -> Execution:
    """An execution of the caller's (any, for an admin); others' are reported as absent."""
    execution = db.get(Execution, execution_id)
    if execution is None or (execution.owner_id != user.id and user.role != Role.ADMIN):
        raise NotFound(f"execution {execution_id!r} does not exist",
                       hint="list yours with 'waas executions list'")
    return execution


def list_executions(db: Session, user: User, *, state: ExecutionState | None = None, workflow: str | None = None,
                    since: datetime | None = None, limit: int = 100, all_users: bool = False) -> Sequence[Execution]:
    """The caller's executions, newest first (all users' for an admin who asks)."""
    query = select(Execution).order_by(Execution.created_at.desc()).limit(limit)
    if not (all_users and user.role == Role.ADMIN):
        query = query.where(Execution.owner_id == user.id)
    if state is not None:
        query = query.where(Execution.state == state)
    if workflow is not None:
        query = query.where(Execution.workflow_id == workflow_service.get_visible(db, user, workflow).id)
    if since is not None:
        query = query.where(Execution.created_at >= since)
    return db.scalars(query).all()


def cancel_execution(db: Session, user: User, execution_id: str) -> Execution:
    """Request cancellation; the engine cancels Slurm jobs and pipeline runs, then marks it cancelled."""
    execution = get_execution(db, user, execution_id)
    if execution.state in EXECUTION_TERMINAL:
        return execution
    execution.cancel_requested = True
    if execution.state == ExecutionState.PENDING and execution.record is None:
        # Nothing ran yet: nothing to undo.
        execution.state = ExecutionState.CANCELLED
        execution.finished_at = utcnow()
    else:
        execution.state = ExecutionState.CANCELLING
    execution.wake_at = utcnow()
    db.commit()
    return execution


def resume_execution(db: Session, user: User, execution_id: str) -> Execution:
    """Take up a failed or cancelled execution again from the step that failed or was cancelled:
    what finished is reused (the engine retries only those operations; a batch job or pipeline run
    that completed is not repeated). The owner or an admin may; any other state is a 409."""
    execution = get_execution(db, user, execution_id)
    if execution.state not in (ExecutionState.FAILED, ExecutionState.CANCELLED):
        raise Conflict(f"execution {execution_id} is {execution.state.value}; only a failed or cancelled one can "
                       "be resumed", hint="a completed execution is not run again: invoke the workflow again")
    if execution.scratch_removed_at is not None:
        raise Conflict(f"execution {execution_id} ended too long ago: its folder on the site was removed "
                       "(the gateway's run retention)", hint="invoke the workflow again")
    if execution.record is None:
        raise Conflict(f"execution {execution_id} ended before any step ran; nothing to resume",
                       hint="invoke the workflow again")
    execution.state, execution.error, execution.finished_at = ExecutionState.PENDING, None, None
    execution.cancel_requested = False
    execution.wake_at = utcnow()
    db.commit()
    return execution


def log_page(db: Session, subject_id: str, after: int, limit: int = 500) -> list[LogLine]:
    """Log lines of a deployment or execution after ``after``, in order."""
    return list(db.scalars(select(LogLine).where(LogLine.subject_id == subject_id, LogLine.seq > after)
                           .order_by(LogLine.seq).limit(limit)).all())
