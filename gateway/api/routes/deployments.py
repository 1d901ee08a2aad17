"""Deployments: install a workflow version on a site, follow it, undeploy it."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from gateway.api.deps import CurrentUser, DeveloperUser, SessionDep
from gateway.schemas.common import MAX_INT
from gateway.schemas.runs import DeploymentCreate, DeploymentOut, LogPage
from gateway.services import deployments_view as view
from gateway.services import runs as service

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post("", response_model=DeploymentOut, status_code=202, summary="Deploy a workflow version to a site")
def create(data: DeploymentCreate, response: Response, db: SessionDep, user: DeveloperUser) -> DeploymentOut:
    deployment = service.create_deployment(db, user, data)
    response.headers["Location"] = f"/deployments/{deployment.id}"
    return view.deployment_out(deployment)


@router.get("", response_model=list[DeploymentOut], summary="Deployments of the workflows you may see")
def list_deployments(db: SessionDep, user: CurrentUser, workflow: str | None = None) -> list[DeploymentOut]:
    return [view.deployment_out(d) for d in service.list_deployments(db, user, workflow)]


@router.get("/{deployment_id}", response_model=DeploymentOut, summary="A deployment, with per-node states")
def show(deployment_id: str, db: SessionDep, user: CurrentUser) -> DeploymentOut:
    return view.deployment_out(service.get_deployment(db, user, deployment_id))


@router.delete("/{deployment_id}", response_model=DeploymentOut, status_code=202, summary="Undeploy")
def undeploy(deployment_id: str, db: SessionDep, user: CurrentUser) -> DeploymentOut:
    return view.deployment_out(service.undeploy(db, user, deployment_id))


@router.get("/{deployment_id}/logs", response_model=LogPage, summary="Log lines (long-poll with wait)")
def logs(deployment_id: str, db: SessionDep, user: CurrentUser, after: int = Query(0, ge=0, le=MAX_INT),
         wait: float = Query(0, ge=0, le=30)) -> LogPage:
    return view.deployment_logs(db, user, deployment_id, after, wait)
