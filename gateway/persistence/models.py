"""ORM models of the gateway (SQLAlchemy 2 typed mappings)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hpcwaas.db import Base, new_id, utcnow

__all__ = [
    "AdhocJob",
    "ApiToken",
    "Base",
    "Deployment",
    "DeploymentState",
    "Execution",
    "ExecutionState",
    "LogLine",
    "Mirror",
    "Role",
    "SSHKey",
    "Site",
    "User",
    "Visibility",
    "Workflow",
    "WorkflowVersion",
    "new_id",
    "utcnow",
]


class Role(enum.StrEnum):
    """What a user may do.

    admin: everything, including users, tokens of others and sites.
    developer: registers and deploys workflows (and everything a scientist does).
    scientist: invokes deployed workflows, manages their own SSH keys and data.
    """

    ADMIN = "admin"
    DEVELOPER = "developer"
    SCIENTIST = "scientist"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    full_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    disabled: Mapped[bool] = mapped_column(default=False)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens", lazy="joined")


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    login_host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=22)
    scheduler: Mapped[str] = mapped_column(String(16), default="slurm")
    partitions: Mapped[list[str]] = mapped_column(JSON, default=list)
    work_dir: Mapped[str] = mapped_column(String(1024))
    host_key: Mapped[str] = mapped_column(Text)
    host_key_fingerprint: Mapped[str] = mapped_column(String(100))
    # Runs log in with per-run certificates from Vault's SSH CA instead of stored keys.
    ssh_certificates: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SSHKey(Base):
    """The public half and metadata of a user's SSH key; the private half lives only in Vault."""

    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_type: Mapped[str] = mapped_column(String(32))
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(100))
    login: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))  # "generated" or "imported"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]


class Visibility(enum.StrEnum):
    """Who may see and invoke a workflow.

    public: every authenticated user.
    restricted: its owner, admins, and the listed users and groups.
    """

    PUBLIC = "public"
    RESTRICTED = "restricted"


class Workflow(Base):
    """A named workflow in the registry; its content lives in immutable versions."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    visibility: Mapped[Visibility] = mapped_column(
        Enum(Visibility, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=Visibility.PUBLIC,
    )
    allowed_users: Mapped[list[str]] = mapped_column(JSON, default=list)
    allowed_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    versions: Mapped[list[WorkflowVersion]] = relationship(
        back_populates="workflow", order_by="WorkflowVersion.number", cascade="all, delete-orphan"
    )


class WorkflowVersion(Base):
    """One immutable registration: a content digest, where it came from, what it declares."""

    __tablename__ = "workflow_versions"
    __table_args__ = (
        UniqueConstraint("workflow_id", "digest", name="uq_workflow_versions_digest"),
        UniqueConstraint("workflow_id", "number", name="uq_workflow_versions_number"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(80))  # "git:<sha>" or "sha256:<hex>"
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    bundle: Mapped[str] = mapped_column(String(1024))  # folder (or CSAR file) under the registry store
    entry: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    workflows: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    nodes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    registered_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    workflow: Mapped[Workflow] = relationship(back_populates="versions")


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class DeploymentState(enum.StrEnum):
    """Lifecycle of a deployment.

    pending: accepted; a worker will start the install workflow.
    deploying: the install workflow runs (image build, image transfer, software install).
    deployed: installed; scientists can invoke it.
    failed: the install or uninstall workflow failed; the error says where. Retry or undeploy.
    undeploying: the uninstall workflow runs.
    undeployed: removed from the site (terminal).
    """

    PENDING = "pending"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    FAILED = "failed"
    UNDEPLOYING = "undeploying"
    UNDEPLOYED = "undeployed"


DEPLOYMENT_TERMINAL = frozenset({DeploymentState.UNDEPLOYED})
DEPLOYMENT_ACTIVE = frozenset({DeploymentState.PENDING, DeploymentState.DEPLOYING, DeploymentState.UNDEPLOYING})


class ExecutionState(enum.StrEnum):
    """Lifecycle of an execution (one invocation of a deployed workflow).

    pending: accepted (inputs checked); waiting for a worker.
    running: the workflow runs: stage-in, batch job, stage-out; per-step states are in ``steps``.
    cancelling: cancel requested; Slurm jobs and pipeline runs are being cancelled.
    completed: every step succeeded; ``outputs`` holds the results (terminal).
    failed: a step failed; ``error`` names it and carries the stderr tail (terminal for the engine;
        its owner may resume it from the failed step: back to pending).
    cancelled: cancelled by its owner or an admin (terminal).
    """

    PENDING = "pending"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


EXECUTION_TERMINAL = frozenset({ExecutionState.COMPLETED, ExecutionState.FAILED, ExecutionState.CANCELLED})


class Leased:
    """Columns a worker uses to claim a record: one worker at a time, taken over when it dies."""

    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    wake_at: Mapped[datetime | None] = mapped_column(index=True)  # when a worker should look again


class Deployment(Leased, Base):
    """A workflow version installed on a site with a developer's credential."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="RESTRICT"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("workflow_versions.id", ondelete="RESTRICT"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    ssh_key_id: Mapped[str] = mapped_column(String(32))
    login: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[DeploymentState] = mapped_column(_enum(DeploymentState), default=DeploymentState.PENDING)
    target: Mapped[str] = mapped_column(String(16), default="deployed")  # "deployed" or "undeployed"
    error: Mapped[str | None] = mapped_column(Text)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the deployer's DeploymentRecord
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Execution(Leased, Base):
    """One invocation of a deployed workflow by a user, with their own SSH key."""

    __tablename__ = "executions"
    __table_args__ = (Index("ix_executions_owner_id_state", "owner_id", "state"),)  # a user's runs in flight

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id", ondelete="RESTRICT"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="RESTRICT"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    ssh_key_id: Mapped[str] = mapped_column(String(32))
    login: Mapped[str] = mapped_column(String(64))
    workflow_name: Mapped[str | None] = mapped_column(String(64))  # the registered workflow's name, as run
    tosca_workflow: Mapped[str] = mapped_column(String(64), default="execute")  # the TOSCA workflow run
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[ExecutionState] = mapped_column(_enum(ExecutionState), default=ExecutionState.PENDING, index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the deployer's state for this run
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    scratch_removed_at: Mapped[datetime | None]  # its folder on the site removed (run retention)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AdhocJob(Base):
    """An ad-hoc batch job submitted through the gateway: its submitter (or an admin) alone sees or
    cancels it. A site may reuse a job id (its state wiped): the newest record is the job."""

    __tablename__ = "adhoc_jobs"
    __table_args__ = (Index("ix_adhoc_jobs_site_id_job_id", "site_id", "job_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(32))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    login: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LogLine(Base):
    """A line of a deployment's or execution's log, in order (streamed to clients)."""

    __tablename__ = "log_lines"
    __table_args__ = (UniqueConstraint("subject_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(32), index=True)  # deployment or execution id
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    step: Mapped[str | None] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)


class Mirror(Leased, Base):
    """A catalogue storage target (or a folder of it) kept identical to a path on a site.

    The gateway's engine runs the ``sync`` pipeline for it every ``pipelines_sync_interval_minutes``
    (an operator's setting) with its owner's SSH key, through a single-use wrapping token like any
    run: no standing credential waits in Airflow. ``wake_at`` is the next run.
    """

    __tablename__ = "mirrors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    storage_target_id: Mapped[str] = mapped_column(
        ForeignKey("catalogue_storage_targets.id", ondelete="RESTRICT"), index=True)
    source_path: Mapped[str] = mapped_column(String(1024), default="")  # under the target's base path
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"))
    site_path: Mapped[str] = mapped_column(String(1024))  # in the owner's work dir on the site
    ssh_key_id: Mapped[str] = mapped_column(String(32))
    login: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_run_id: Mapped[str | None] = mapped_column(String(250))
    last_triggered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
