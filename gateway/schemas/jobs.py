"""Ad-hoc batch jobs on a site, run with the caller's own SSH key."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.schemas.sites import SiteAccess


class JobSubmit(SiteAccess):
    script: str = Field(min_length=3, max_length=1_000_000, description="Batch script, starting with #!.")
    name: str = Field(default="hpcwaas-job", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
    partition: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    time_limit: str | None = Field(default=None, pattern=r"^([0-9]+-)?[0-9]{1,3}(:[0-9]{2}){0,2}$")
    ntasks: int | None = Field(default=None, ge=1, le=100_000)
    wait: bool = Field(default=False, description="Block until the job ends (sbatch --wait).")


class JobOut(BaseModel):
    site: str
    login: str
    job_id: str
    state: str
    exit_code: int | None = None
    reason: str | None = None
    stdout_path: str | None = None
    stdout_tail: str | None = None
    stderr_tail: str | None = None
