"""Ad-hoc batch jobs and scheduler information on a site, with the caller's own SSH key."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.errors import NotFound
from gateway.persistence.models import AdhocJob, Role, User
from gateway.schemas.jobs import JobOut, JobSubmit
from gateway.schemas.sites import PartitionOut, SiteAccess, SiteInfo
from gateway.services import sites as site_service
from gateway.services.ssh_keys import site_session
from hpcwaas.slurm import JobInfo, JobSpec, Slurm, check_job_id
from hpcwaas.ssh import SSHSession
from hpcwaas.vault import Vault

_TAIL_LINES = 200


def info(db: Session, vault: Vault, user: User, site_name: str, access: SiteAccess, timeout: float) -> SiteInfo:
    """The scheduler's version and partitions as the caller's site user sees them."""
    with site_session(db, vault, user, site_name, access.ssh_key, access.login, timeout) as (site, login, ssh):
        slurm = Slurm(ssh)
        version = slurm.version()
        partitions = [PartitionOut(**vars(p)) for p in slurm.partitions()]
    return SiteInfo(site=site.name, login=login, scheduler_version=version, partitions=partitions)


def _describe(site_name: str, login: str, job: JobInfo, ssh: SSHSession, spec: JobSpec | None = None) -> JobOut:
    slurm = Slurm(ssh)
    if spec is not None and job.stdout_path is None:
        # The job already left scontrol's memory: its paths follow from what we submitted.
        def expand(pattern: str | None) -> str | None:
            return pattern.replace("%x", spec.name).replace("%j", job.job_id) if pattern else None

        job.stdout_path, job.stderr_path = expand(spec.output), expand(spec.error)
    out = JobOut(
        site=site_name,
        login=login,
        job_id=job.job_id,
        state=job.state.value,
        exit_code=job.exit_code,
        reason=job.reason if job.reason not in (None, "None") else None,
        stdout_path=job.stdout_path,
    )
    if job.stdout_path:
        out.stdout_tail = slurm.tail(job.stdout_path, _TAIL_LINES)
    if job.stderr_path and job.stderr_path != job.stdout_path:
        out.stderr_tail = slurm.tail(job.stderr_path, _TAIL_LINES)
    return out


def submit(db: Session, vault: Vault, user: User, site_name: str, data: JobSubmit, timeout: float) -> JobOut:
    """Submit a batch script in the caller's work folder on the site; optionally wait for its end."""
    with site_session(db, vault, user, site_name, data.ssh_key, data.login, timeout) as (site, login, ssh):
        work = site_service.work_dir_for(site, login)
        ssh.run(["mkdir", "-p", "--", f"{work}/jobs"], check=True, timeout=60)
        spec = JobSpec(
            script=data.script,
            name=data.name,
            partition=data.partition,
            time_limit=data.time_limit,
            ntasks=data.ntasks,
            chdir=work,
            output=f"{work}/jobs/%x-%j.out",
            error=f"{work}/jobs/%x-%j.err",
            comment=f"hpcwaas:adhoc:{user.id}",
        )
        slurm = Slurm(ssh)
        if data.wait:
            job_id, _ = slurm.submit_and_wait(spec)
        else:
            job_id = slurm.submit(spec)
        db.add(AdhocJob(site_id=site.id, job_id=job_id, owner_id=user.id, login=login))
        db.commit()  # recorded before the answer: the job is the caller's from now on
        return _describe(site.name, login, slurm.status(job_id), ssh, spec)


def _check_owned(db: Session, user: User, site_name: str, job_id: str) -> None:
    """Refuse (404, before anything connects) a job the caller did not submit; admins see all."""
    check_job_id(job_id)
    site = site_service.get(db, site_name)
    owner = db.scalar(select(AdhocJob.owner_id).where(AdhocJob.site_id == site.id, AdhocJob.job_id == job_id)
                      .order_by(AdhocJob.created_at.desc()).limit(1))
    if owner is None or (owner != user.id and user.role != Role.ADMIN):
        raise NotFound(f"no job {job_id} of yours on site {site_name!r}",
                       hint="only jobs you submitted through the gateway are shown (GET /executions for workflows)")


def status(db: Session, vault: Vault, user: User, site_name: str, job_id: str, access: SiteAccess,
           timeout: float) -> JobOut:
    """A job's state and output tails (the caller's own jobs only)."""
    _check_owned(db, user, site_name, job_id)
    with site_session(db, vault, user, site_name, access.ssh_key, access.login, timeout) as (site, login, ssh):
        return _describe(site.name, login, Slurm(ssh).status(job_id), ssh)


def cancel(db: Session, vault: Vault, user: User, site_name: str, job_id: str, access: SiteAccess,
           timeout: float) -> JobOut:
    """Cancel one of the caller's jobs and report its state."""
    _check_owned(db, user, site_name, job_id)
    with site_session(db, vault, user, site_name, access.ssh_key, access.login, timeout) as (site, login, ssh):
        slurm = Slurm(ssh)
        slurm.cancel(job_id)
        return _describe(site.name, login, slurm.status(job_id), ssh)
