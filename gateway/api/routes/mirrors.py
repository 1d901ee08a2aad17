"""Mirrors in the catalogue: a storage target kept in sync with a path on a site, on a schedule."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import CurrentUser, SessionDep
from gateway.schemas.mirrors import MirrorCreate, MirrorOut
from gateway.services import mirrors as service

router = APIRouter(prefix="/catalogue/mirrors", tags=["catalogue"])


@router.post("", response_model=MirrorOut, status_code=201,
             summary="Mirror a storage target you own to a site path (first sync at once, then on schedule)")
def create(data: MirrorCreate, response: Response, db: SessionDep, user: CurrentUser) -> MirrorOut:
    mirror = service.create(db, user, data)
    response.headers["Location"] = f"/catalogue/mirrors/{mirror.id}"
    return MirrorOut.model_validate(mirror)


@router.get("", response_model=list[MirrorOut], summary="Your mirrors (all of them, for an admin)")
def list_mirrors(db: SessionDep, user: CurrentUser) -> list[MirrorOut]:
    return [MirrorOut.model_validate(m) for m in service.list_visible(db, user)]


@router.get("/{mirror_id}", response_model=MirrorOut, summary="A mirror: its newest run and the next one")
def show(mirror_id: str, db: SessionDep, user: CurrentUser) -> MirrorOut:
    return MirrorOut.model_validate(service.get(db, user, mirror_id))


@router.post("/{mirror_id}/sync", response_model=MirrorOut, status_code=202, summary="Sync now")
def sync_now(mirror_id: str, db: SessionDep, user: CurrentUser) -> MirrorOut:
    return MirrorOut.model_validate(service.sync_now(db, user, mirror_id))


@router.delete("/{mirror_id}", status_code=204, summary="Stop mirroring (the copy on the site stays)")
def delete(mirror_id: str, db: SessionDep, user: CurrentUser) -> None:
    service.delete(db, user, mirror_id)
