"""Mirrors: catalogue storage targets kept in sync with site paths by the ``sync`` pipeline.

A mirror is defined in the catalogue by the owner of a storage target (mirroring copies every
dataset under it, restricted ones too, so nobody else may). The gateway's engine claims due
mirrors like any leased record and starts a ``sync`` run for each, every
``pipelines_sync_interval_minutes`` (the operator's setting), through ``pipelines.start_run``:
the owner's key reaches Airflow only as a single-use wrapping token, as for any run, and no
standing credential waits in Airflow between runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from catalogue.models import StorageTarget
from catalogue.schemas import join_under
from catalogue.service import get_target
from data_logistics.errors import AirflowUnavailable, PipelineNotFound
from gateway.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from gateway.persistence.models import Mirror, Role, Site, User, utcnow
from gateway.schemas.mirrors import MirrorCreate
from gateway.schemas.pipelines import PipelineRunCreate
from gateway.services import pipelines
from gateway.services import sites as site_service
from gateway.services.ssh_keys import get_owned, resolve_login
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
RETRY_WHEN_AIRFLOW_IS_DOWN = timedelta(minutes=1)


def source_url(target: StorageTarget, path: str) -> str:
    """The pipelines' URL for a folder of a storage target (``file:`` or ``sftp://site//abs``)."""
    where = join_under(target.base_path, path) if path else target.base_path
    if target.protocol == "file":
        return f"file:{where}"
    if target.protocol == "sftp":
        return f"sftp://{target.site}/{where}"  # an absolute path: sftp://site//abs
    raise InvalidInput(f"storage target {target.name!r} is on {target.protocol!r} storage, which the sync "
                       "pipeline cannot read", hint="mirror a file or sftp storage target", field="storage_target")


def create(db: Session, user: User, data: MirrorCreate) -> Mirror:
    """Define a mirror (the storage target's owner or an admin); its first sync is due at once."""
    target = get_target(db, data.storage_target)
    if target.owner_id != user.id and user.role != Role.ADMIN:
        raise PermissionDenied(f"only the owner of storage target {target.name!r} or an admin may mirror it",
                               hint="a mirror copies every dataset under it, restricted ones too")
    source_url(target, data.path)
    site = site_service.get(db, data.site)
    key = get_owned(db, user, data.ssh_key)
    mirror = Mirror(name=data.name, description=data.description, owner_id=user.id, storage_target_id=target.id,
                    source_path=data.path, site_id=site.id, site_path=data.site_path, ssh_key_id=key.id,
                    login=resolve_login(key, data.login), wake_at=utcnow())
    db.add(mirror)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict(f"a mirror named {data.name!r} exists already", field="name") from None
    return mirror


def list_visible(db: Session, user: User) -> list[Mirror]:
    """Your mirrors (every mirror, for an admin), by name."""
    query = select(Mirror).order_by(Mirror.name)
    if user.role != Role.ADMIN:
        query = query.where(Mirror.owner_id == user.id)
    return list(db.scalars(query))


def get(db: Session, user: User, mirror_id: str) -> Mirror:
    """A mirror of yours (any, for an admin); others' are reported as absent."""
    mirror = db.get(Mirror, mirror_id)
    if mirror is None or (mirror.owner_id != user.id and user.role != Role.ADMIN):
        raise NotFound(f"mirror {mirror_id!r} does not exist", hint="list yours with GET /catalogue/mirrors")
    return mirror


def delete(db: Session, user: User, mirror_id: str) -> None:
    """Stop mirroring (the copy on the site stays)."""
    db.delete(get(db, user, mirror_id))
    db.commit()


def sync_now(db: Session, user: User, mirror_id: str) -> Mirror:
    """Make the next sync due now (the engine starts it within its poll interval)."""
    mirror = get(db, user, mirror_id)
    mirror.enabled = True
    mirror.wake_at = utcnow()
    db.commit()
    return mirror


def run_due(sessions: sessionmaker[Session], vault: Vault, settings: Settings, mirror_id: str) -> datetime | None:
    """Start the due sync run of a mirror (the engine holds its lease); when to look again.

    The run id is derived from the due time, so a worker that dies after starting the run and
    before recording it finds the run on the retry instead of starting a second one."""
    with sessions() as db:
        mirror = db.get(Mirror, mirror_id)
        if mirror is None or not mirror.enabled or mirror.wake_at is None:
            return None
        now = utcnow()
        run_id = f"mirror-{mirror.id}-{mirror.wake_at:%Y%m%dT%H%M%S}"
        next_run = now + timedelta(minutes=settings.pipelines_sync_interval_minutes)
        try:
            _start(db, vault, settings, mirror, run_id)
            mirror.runs += 1
            mirror.last_run_id, mirror.last_error = run_id, None
        except AirflowUnavailable as exc:
            mirror.last_error = exc.message
            next_run = now + RETRY_WHEN_AIRFLOW_IS_DOWN
        except HpcwaasError as exc:  # the key, site or storage target changed: say so, try next time
            log.warning("mirror %s: sync could not start: %s", mirror.name, exc.message)
            mirror.last_error = exc.message
        mirror.last_triggered_at = now
        db.commit()
        return next_run


def _start(db: Session, vault: Vault, settings: Settings, mirror: Mirror, run_id: str) -> None:
    client = pipelines.airflow(settings)
    try:
        client.get_run("sync", run_id)
        return  # started before a crash: not twice
    except PipelineNotFound:
        pass
    owner = db.get(User, mirror.owner_id)
    target = db.get(StorageTarget, mirror.storage_target_id)
    site = db.get(Site, mirror.site_id)
    if owner is None or target is None or site is None:
        raise NotFound("the mirror's owner, storage target or site is gone")
    data = PipelineRunCreate(ssh_key=mirror.ssh_key_id, login=mirror.login,
                             source=source_url(target, mirror.source_path),
                             target=f"sftp://{site.name}/{mirror.site_path}", overwrite=True,
                             label=f"mirror {mirror.name}")
    pipelines.start_run(db, vault, settings, owner, "sync", data, run_id=run_id, source_owner=target.owner_id)
