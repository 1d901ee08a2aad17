"""Shaping deployments and executions for responses (per-node states, log pages, streams)."""

from __future__ import annotations

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from gateway.persistence.models import (
    DEPLOYMENT_ACTIVE,
    EXECUTION_TERMINAL,
    Deployment,
    Execution,
    User,
)
from gateway.schemas.runs import DeploymentOut, LogPage
from gateway.services import logs
from gateway.services import runs as service


def deployment_out(deployment: Deployment) -> DeploymentOut:
    out = DeploymentOut.model_validate(deployment)
    nodes = (deployment.record or {}).get("nodes", {})
    out.nodes = {name: str(node.get("state", "initial")) for name, node in nodes.items()}
    return out


def deployment_logs(db: Session, user: User, deployment_id: str, after: int, wait: float) -> LogPage:
    service.get_deployment(db, user, deployment_id)

    def finished() -> bool:
        current = db.get(Deployment, deployment_id)
        return current is None or (current.state not in DEPLOYMENT_ACTIVE and current.wake_at is None)

    return logs.page(db, deployment_id, after, wait, finished)


def execution_logs(db: Session, user: User, execution_id: str, after: int, wait: float) -> LogPage:
    service.get_execution(db, user, execution_id)

    def finished() -> bool:
        db.expire_all()
        current = db.get(Execution, execution_id)
        return current is None or current.state in EXECUTION_TERMINAL

    return logs.page(db, execution_id, after, wait, finished)


def execution_stream(sessions: sessionmaker[Session], db: Session, user: User, execution_id: str,
                     after: int) -> StreamingResponse:
    service.get_execution(db, user, execution_id)  # ownership is checked before the stream opens

    def finished(session: Session) -> bool:
        current = session.get(Execution, execution_id)
        return current is None or current.state in EXECUTION_TERMINAL

    return StreamingResponse(logs.events(sessions, execution_id, after, finished), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
