"""Deployments (a workflow installed on a site) and executions (invocations of a deployment)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from gateway.persistence.models import DeploymentState, ExecutionState
from gateway.schemas.common import MAX_INT, Inputs, Login, ORMModel, RequestModel, SiteName


class DeploymentCreate(RequestModel):
    workflow: str = Field(description="Workflow id or name.")
    version: int | None = Field(default=None, ge=1, le=MAX_INT, description="Version number; the latest when omitted.")
    site: SiteName
    ssh_key: str = Field(description="Id of your SSH key used to install on the site.")
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")
    inputs: Inputs = Field(default_factory=dict, description="Topology inputs.")


class DeploymentOut(ORMModel):
    id: str
    workflow_id: str
    version_id: str
    site_id: str
    owner_id: str
    login: str
    inputs: dict[str, Any]
    state: DeploymentState
    target: str
    error: str | None
    outputs: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    nodes: dict[str, str] = Field(default_factory=dict, description="Node -> TOSCA state.")


class ExecutionCreate(RequestModel):
    inputs: Inputs = Field(default_factory=dict, description="Inputs of the workflow's execute workflow.")
    ssh_key: str = Field(description="Id of your own SSH key; the job runs as your site user.")
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")
    deployment: str | None = Field(default=None, description="Deployment id; else the newest on `site`.")
    site: SiteName | None = Field(default=None, description="Pick the workflow's deployment on this site.")
    tosca_workflow: str = Field(default="execute", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
                                description="The TOSCA workflow of the template to run.")


class StepOut(BaseModel):
    name: str
    state: str
    started_at: float | None = None
    finished_at: float | None = None
    job_id: str | None = None
    pipeline_run_id: str | None = None
    error: str | None = None
    waiting_for: str | None = Field(default=None, description="A service the step waits for (it is away).")
    waiting_since: float | None = Field(default=None, description="Since when it waits (epoch seconds).")


class ExecutionOut(ORMModel):
    id: str
    workflow_id: str
    deployment_id: str
    owner_id: str
    login: str
    workflow_name: str | None = Field(description="The name of the workflow that ran (as registered).")
    tosca_workflow: str = Field(description="The TOSCA workflow of its template that ran (`execute`).")
    inputs: dict[str, Any]
    state: ExecutionState
    cancel_requested: bool
    error: str | None
    steps: list[dict[str, Any]]
    outputs: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class LogLineOut(ORMModel):
    seq: int
    at: datetime
    level: str
    step: str | None
    text: str


class LogPage(BaseModel):
    lines: list[LogLineOut]
    next_seq: int = Field(description="Ask for lines after this one next time.")
    finished: bool = Field(description="True when the subject reached a terminal state and no line follows.")
