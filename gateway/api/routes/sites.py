"""HPC sites: admins register them with a pinned host key; everyone signed in can list them."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep, VaultDep
from gateway.schemas.sites import HostKeyOut, HostKeyScan, SiteAccess, SiteCreate, SiteInfo, SiteOut, SiteUpdate
from gateway.services import jobs as job_service
from gateway.services import sites as service

router = APIRouter(prefix="/sites", tags=["sites"])


@router.post("/host-keys", response_model=list[HostKeyOut], summary="Fetch a login node's host keys (admin)")
def scan(data: HostKeyScan, settings: SettingsDep, _: AdminUser) -> list[HostKeyOut]:
    return service.scan(data.login_host, data.port, settings.ssh_connect_timeout)


@router.post("", response_model=SiteOut, status_code=201, summary="Register a site (admin)")
def register(data: SiteCreate, db: SessionDep, admin: AdminUser) -> SiteOut:
    return SiteOut.model_validate(service.register(db, admin, data))


@router.get("", response_model=list[SiteOut], summary="List sites")
def list_sites(db: SessionDep, _: CurrentUser) -> list[SiteOut]:
    return [SiteOut.model_validate(s) for s in service.list_all(db)]


@router.get("/{name}", response_model=SiteOut, summary="Show a site")
def show(name: str, db: SessionDep, _: CurrentUser) -> SiteOut:
    return SiteOut.model_validate(service.get(db, name))


@router.patch("/{name}", response_model=SiteOut, summary="Change a site, or re-pin its host key (admin)")
def update(name: str, data: SiteUpdate, db: SessionDep, _: AdminUser) -> SiteOut:
    return SiteOut.model_validate(service.update(db, name, data))


@router.delete("/{name}", status_code=204, summary="Remove a site (admin)")
def delete(name: str, db: SessionDep, _: AdminUser) -> Response:
    service.delete(db, name)
    return Response(status_code=204)


@router.post("/{name}/info", response_model=SiteInfo, summary="Scheduler version and partitions, with your key")
def info(name: str, access: SiteAccess, db: SessionDep, vault: VaultDep, settings: SettingsDep,
         user: CurrentUser) -> SiteInfo:
    return job_service.info(db, vault, user, name, access, settings.ssh_connect_timeout)
