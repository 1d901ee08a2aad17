"""Ad-hoc batch jobs on a site, submitted and followed with the caller's own SSH key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from gateway.api.deps import CurrentUser, SessionDep, SettingsDep, VaultDep
from gateway.schemas.common import Login
from gateway.schemas.jobs import JobOut, JobSubmit
from gateway.schemas.sites import SiteAccess
from gateway.services import jobs as service
from hpcwaas.slurm import JOB_ID

router = APIRouter(prefix="/sites/{name}/jobs", tags=["jobs"])


def _access(ssh_key: Annotated[str, Query()], login: Annotated[Login | None, Query()] = None) -> SiteAccess:
    return SiteAccess(ssh_key=ssh_key, login=login)


AccessDep = Annotated[SiteAccess, Depends(_access)]
JobId = Annotated[str, Path(pattern=JOB_ID, description="A job id: 123, or 123_4 for a task of an array job.")]


@router.post("", response_model=JobOut, status_code=201, summary="Submit a batch job (optionally wait for it)")
def submit(name: str, data: JobSubmit, db: SessionDep, vault: VaultDep, settings: SettingsDep,
           user: CurrentUser) -> JobOut:
    return service.submit(db, vault, user, name, data, settings.ssh_connect_timeout)


@router.get("/{job_id}", response_model=JobOut, summary="A job's state and output")
def status(name: str, job_id: JobId, access: AccessDep, db: SessionDep,
           vault: VaultDep, settings: SettingsDep, user: CurrentUser) -> JobOut:
    return service.status(db, vault, user, name, job_id, access, settings.ssh_connect_timeout)


@router.delete("/{job_id}", response_model=JobOut, summary="Cancel a job")
def cancel(name: str, job_id: JobId, access: AccessDep, db: SessionDep, vault: VaultDep, settings: SettingsDep,
           user: CurrentUser) -> JobOut:
    return service.cancel(db, vault, user, name, job_id, access, settings.ssh_connect_timeout)
