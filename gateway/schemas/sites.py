"""HPC sites."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from gateway.schemas.common import Login, ORMModel, RequestModel, SiteName

Host = Annotated[
    str,
    StringConstraints(
        max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9-]{1,63})*$|^[0-9a-fA-F:]+$"
    ),
    Field(description="Host name or IP address of the login node."),
]
WorkDir = Annotated[
    str,
    StringConstraints(pattern=r"^/([A-Za-z0-9_.+-]+|\{login\})(/([A-Za-z0-9_.+-]+|\{login\}))*/?$"),
    Field(description="Absolute path of the work folder on the site; '{login}' stands for the site user."),
]
Partition = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class HostKeyScan(RequestModel):
    login_host: Host
    port: int = Field(default=22, ge=1, le=65535)


class HostKeyOut(BaseModel):
    key: str = Field(description="The host key, '<type> <base64>'.")
    key_type: str
    fingerprint: str = Field(description="SHA256 fingerprint, as ssh-keygen -l prints it.")


class SiteCreate(RequestModel):
    name: SiteName
    description: str | None = Field(default=None, max_length=2000)
    login_host: Host
    port: int = Field(default=22, ge=1, le=65535)
    scheduler: Literal["slurm"] = "slurm"
    partitions: list[Partition] = Field(default_factory=list, max_length=100)
    work_dir: WorkDir = "/home/{login}/hpcwaas"
    host_key: str = Field(
        min_length=20,
        max_length=20000,
        description="The pinned host key '<type> <base64>', confirmed by the admin (see POST /sites/host-keys).",
    )
    ssh_certificates: bool = Field(
        default=False, description="Each run logs in with a new key and a short-lived certificate from the "
        "gateway's Vault SSH CA (key id: the execution or deployment), which the site's sshd trusts "
        "(TrustedUserCAKeys; principal: the user's site login). Off: the user's stored key.")


class SiteUpdate(RequestModel):
    description: str | None = Field(default=None, max_length=2000)
    login_host: Host | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    partitions: list[Partition] | None = Field(default=None, max_length=100)
    work_dir: WorkDir | None = None
    host_key: str | None = Field(default=None, min_length=20, max_length=20000)
    ssh_certificates: bool | None = None


class SiteOut(ORMModel):
    id: str
    name: str
    description: str | None
    login_host: str
    port: int
    scheduler: str
    partitions: list[str]
    work_dir: str
    host_key: str
    host_key_fingerprint: str
    ssh_certificates: bool
    created_at: datetime
    updated_at: datetime


class SiteAccess(RequestModel):
    """Which of the caller's SSH keys to use on a site, and as which site user."""

    ssh_key: str = Field(description="Id of one of your SSH keys.")
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")


class PartitionOut(BaseModel):
    name: str
    default: bool
    available: bool
    time_limit: str
    nodes: int


class SiteInfo(BaseModel):
    site: str
    login: str
    scheduler_version: str
    partitions: list[PartitionOut]
