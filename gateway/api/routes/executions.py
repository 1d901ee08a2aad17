"""Executions: invoke a deployed workflow (FaaS-style), follow it live, get outputs, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from gateway.api.deps import BearerToken, CurrentUser, SessionDep, Writer, as_user, bearer_token, in_session
from gateway.persistence.models import ExecutionState, User
from gateway.schemas.common import MAX_INT, Moment
from gateway.schemas.runs import ExecutionCreate, ExecutionOut, LogPage
from gateway.services import deployments_view as view
from gateway.services import provenance as provenance_service
from gateway.services import runs as service

router = APIRouter(tags=["executions"])


@router.post("/workflows/{ref}/executions", response_model=ExecutionOut, status_code=202,
             summary="Invoke a deployed workflow with inputs and your SSH key")
async def invoke(ref: str, data: ExecutionCreate, request: Request, response: Response, token: BearerToken,
                 writer: Writer) -> ExecutionOut:
    # The hot path: token and checks in one thread-pool hop (one query when all is in order), then
    # the insert shares a commit with the invocations arriving at the same time (answered once committed).
    settings = request.app.state.settings
    execution = await in_session(request, service.accept_invocation, bearer_token(token), ref, data,
                                 settings.pipelines_storage_root, settings.max_executions_in_flight)
    await writer.add(execution)
    response.headers["Location"] = f"/executions/{execution.id}"
    return ExecutionOut.model_validate(execution)


@router.get("/executions", response_model=list[ExecutionOut], summary="Your executions, newest first")
def list_executions(db: SessionDep, user: CurrentUser, state: ExecutionState | None = None,
                    workflow: str | None = None, since: Moment | None = None,
                    limit: int = Query(100, ge=1, le=1000),
                    all_users: bool = Query(False, alias="all")) -> list[ExecutionOut]:
    found = service.list_executions(db, user, state=state, workflow=workflow, since=since, limit=limit,
                                    all_users=all_users)
    return [ExecutionOut.model_validate(e) for e in found]


@router.get("/executions/{execution_id}", response_model=ExecutionOut, summary="State, steps, timings, outputs")
async def show(execution_id: str, request: Request, token: BearerToken) -> ExecutionOut:
    # Polled by every follower (`waas run --follow`): one thread-pool hop, like invoke.
    return await as_user(request, token, _show, execution_id)


def _show(db: Session, user: User, execution_id: str) -> ExecutionOut:
    return ExecutionOut.model_validate(service.get_execution(db, user, execution_id))


@router.delete("/executions/{execution_id}", response_model=ExecutionOut, status_code=202, summary="Cancel")
def cancel(execution_id: str, db: SessionDep, user: CurrentUser) -> ExecutionOut:
    return ExecutionOut.model_validate(service.cancel_execution(db, user, execution_id))


@router.post("/executions/{execution_id}/resume", response_model=ExecutionOut, status_code=202,
             summary="Resume a failed or cancelled execution from its failed step (what finished is reused)")
def resume(execution_id: str, db: SessionDep, user: CurrentUser) -> ExecutionOut:
    return ExecutionOut.model_validate(service.resume_execution(db, user, execution_id))


@router.get("/executions/{execution_id}/outputs", summary="The outputs (catalogue ids of results, ...)")
def outputs(execution_id: str, db: SessionDep, user: CurrentUser) -> dict[str, object]:
    return dict(service.get_execution(db, user, execution_id).outputs)


@router.get("/executions/{execution_id}/provenance",
            summary="W3C PROV (PROV-JSON): who ran which workflow version and image, Slurm jobs, datasets in and out")
def provenance(execution_id: str, db: SessionDep, user: CurrentUser) -> dict[str, object]:
    return provenance_service.execution_provenance(db, user, execution_id)


@router.get("/executions/{execution_id}/logs", response_model=LogPage, summary="Log lines (long-poll with wait)")
def logs(execution_id: str, db: SessionDep, user: CurrentUser, after: int = Query(0, ge=0, le=MAX_INT),
         wait: float = Query(0, ge=0, le=30)) -> LogPage:
    return view.execution_logs(db, user, execution_id, after, wait)


@router.get("/executions/{execution_id}/logs/stream", summary="Live log as server-sent events",
            response_class=StreamingResponse)
def stream(execution_id: str, request: Request, db: SessionDep, user: CurrentUser,
           after: int = Query(0, ge=0, le=MAX_INT)) -> StreamingResponse:
    return view.execution_stream(request.app.state.sessions, db, user, execution_id, after)
