"""Run folders are removed after the operator's retention (``HPCWAAS_RUN_RETENTION_DAYS``).

An execution's folder on the site (``<work dir>/executions/<id>``: staged inputs, job outputs,
scratch) is removed once the execution has ended for the retention period, with its owner's own
key, as everything on the site is done. Never before it ended: a running one is never touched,
and a completed one's results were staged out when it completed. A failed or cancelled one whose
folder is gone can no longer be resumed (``runs.resume_execution`` says so). Each removal is
claimed first (a conditional update), so several workers never race for one.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.persistence.models import EXECUTION_TERMINAL, Deployment, Execution, Site, User, utcnow
from gateway.services import ssh_keys as key_service
from gateway.services.sites import work_dir_for
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
BATCH = 50  # folders removed per sweep at most: a sweep stays short


def run_dir(site: Site, login: str, execution_id: str) -> str:
    """Where an execution's files live on the site (the engine's ``run_dir``)."""
    return f"{work_dir_for(site, login)}/executions/{execution_id}"


def due(db: Session, now: datetime, retention: timedelta) -> list[str]:
    """Ended executions whose folder outlived the retention and is still there."""
    return list(db.scalars(select(Execution.id).where(
        Execution.state.in_(EXECUTION_TERMINAL), Execution.finished_at.is_not(None),
        Execution.finished_at < now - retention, Execution.scratch_removed_at.is_(None),
        Execution.record.is_not(None)).limit(BATCH)).all())


def sweep(sessions: sessionmaker[Session], vault: Vault, settings: Settings, now: datetime | None = None) -> list[str]:
    """Remove the folders that are due; the ids removed (a failure is logged and tried next time)."""
    if settings.run_retention_days <= 0:
        return []
    now = now or utcnow()
    with sessions() as db:
        ids = due(db, now, timedelta(days=settings.run_retention_days))
    return [execution_id for execution_id in ids if _remove(sessions, vault, settings, execution_id, now)]


def _remove(sessions: sessionmaker[Session], vault: Vault, settings: Settings, execution_id: str,
            now: datetime) -> bool:
    with sessions() as db:
        claim = db.execute(update(Execution).where(Execution.id == execution_id,
                                                   Execution.scratch_removed_at.is_(None))
                           .values(scratch_removed_at=now))
        claimed = cast(CursorResult[Any], claim).rowcount
        db.commit()
        if not claimed:
            return False  # another worker has it
        execution = db.get(Execution, execution_id)
        assert execution is not None
        deployment = db.get(Deployment, execution.deployment_id)
        owner = db.get(User, execution.owner_id)
        site = db.get(Site, deployment.site_id) if deployment is not None else None
        try:
            if owner is None or site is None:
                raise HpcwaasError("its owner or site no longer exists")
            with key_service.site_session(db, vault, owner, site.name, execution.ssh_key_id, execution.login,
                                          settings.ssh_connect_timeout) as (_site, login, session):
                folder = run_dir(site, login, execution.id)
                session.run(["rm", "-rf", "--", folder], check=True, timeout=600)
        except HpcwaasError as exc:
            log.warning("run folder of execution %s not removed (%s); trying again later", execution_id, exc.message)
            db.execute(update(Execution).where(Execution.id == execution_id).values(scratch_removed_at=None))
            db.commit()
            return False
    log.info("removed the run folder of execution %s (ended more than %s days ago)", execution_id,
             settings.run_retention_days)
    return True
