"""What the local stack offers, as written to ``<stack_dir>/stack.json`` by ``up``.

Tests, the demo and the gateway's development setup read this instead of knowing the file
layout: addresses, ports, pinned host key, users, and *paths* of secret files (never secrets).
The helper methods read the secrets from those files when asked.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

STACK_JSON = "stack.json"


def _read(path: Path) -> str:
    return path.read_text().strip()


class VaultInfo(BaseModel):
    """One OpenBao server of the stack."""

    flavour: Literal["dev", "raft"]
    addr: str = Field(description="e.g. http://127.0.0.1:18200")
    mount: str = Field(description="KV v2 mount the gateway uses")
    policy: str = Field(description="the gateway token's policy")
    root_token_file: Path
    gateway_token_file: Path
    persistent: bool = Field(description="False: in-memory, empty after every restart")
    init_file: Path | None = Field(default=None, description="the operator's unseal material (root only)")

    def root_token(self) -> str:
        """The kept root token of the in-memory server (tests only; the gateway uses ``gateway_token``).
        The persistent server keeps none: use :meth:`operator_token`."""
        return _read(self.root_token_file)

    @contextmanager
    def operator_token(self) -> Iterator[str]:
        """A root token for the operator's work: the kept one, or one generated with the unseal key
        and revoked when the block ends (the persistent server has no standing root token)."""
        if self.root_token_file.exists():
            yield self.root_token()
            return
        from hpcwaas.stack.openbao import generate_root, revoke

        if self.init_file is None:
            raise FileNotFoundError(f"{self.addr} keeps no root token and no unseal material is known")
        token = generate_root(self.addr, self.init_file)
        try:
            yield token
        finally:
            revoke(self.addr, token)

    def gateway_token(self) -> str:
        """The gateway's periodic token, limited to the ``policy``."""
        return _read(self.gateway_token_file)


class SiteUser(BaseModel):
    """A site account that scientists reach over SSH."""

    name: str
    home: Path
    work_dir: Path


class SiteInfo(BaseModel):
    """The HPC site: an sshd login node in front of a one-node Slurm cluster."""

    host: str
    port: int
    host_key: str = Field(description="the sshd host public key, `ssh-ed25519 AAAA...`")
    users: list[SiteUser]
    scheduler: Literal["slurm"] = "slurm"
    slurm_conf: Path = Field(description="SSH sessions get it as SLURM_CONF (sshd SetEnv)")
    partitions: list[str]
    default_partition: str
    accounting: Literal["slurmdbd", "jobcomp"] = Field(
        description="slurmdbd: `sacct -j N` works; jobcomp: use `sacct -c`"
    )
    cluster_name: str

    @property
    def host_key_type(self) -> str:
        """The key type, e.g. ``ssh-ed25519``."""
        return self.host_key.split()[0]

    @property
    def host_key_blob(self) -> bytes:
        """The raw public key blob (what paramiko's ``PKey.from_type_string`` takes)."""
        return base64.b64decode(self.host_key.split()[1])

    def known_hosts_line(self) -> str:
        """An OpenSSH known_hosts line pinning the host key for host:port."""
        return f"[{self.host}]:{self.port} {self.host_key_type} {self.host_key.split()[1]}"

    def user(self, name: str) -> SiteUser:
        """The site user called ``name`` (KeyError if the stack has no such user)."""
        for user in self.users:
            if user.name == name:
                return user
        raise KeyError(f"no site user {name!r}; the stack has {[u.name for u in self.users]}")


class PostgresInfo(BaseModel):
    """The PostgreSQL server and the ``hpcwaas`` role and database."""

    host: str
    port: int
    user: str
    database: str
    password_file: Path
    url: str = Field(description="SQLAlchemy URL without the password")

    def password(self) -> str:
        """The role's password."""
        return _read(self.password_file)

    def sqlalchemy_url(self, database: str | None = None) -> str:
        """A full SQLAlchemy URL (psycopg 3 driver), password included: keep it out of logs."""
        return (
            f"postgresql+psycopg://{quote(self.user, safe='')}:{quote(self.password(), safe='')}"
            f"@{self.host}:{self.port}/{quote(database or self.database, safe='')}"
        )

    def conninfo(self, database: str | None = None) -> dict[str, str | int]:
        """Keyword arguments for ``psycopg.connect(**info.conninfo())``."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password(),
            "dbname": database or self.database,
        }


class ApptainerInfo(BaseModel):
    """The Apptainer builder: a Debian sid tree entered with pivot_root (see ``stack/apptainer.py``)."""

    tree: Path
    version: str = Field(description="e.g. `apptainer version 1.4.5`")
    build_user: str = Field(description="the non-root user builds run as inside the tree")
    build_uid: int
    builds_dir: str = Field(description="where builds happen, as a path inside the tree")
    mirror: str
    site_command: Path = Field(description="`apptainer` for non-root site users (jobs run it)")
    site_binds: list[Path] = Field(description="host paths visible to `site_command`")


class AirflowInfo(BaseModel):
    """Airflow 3 for the data-logistics pipelines (REST API v2, simple auth manager)."""

    url: str = Field(description="e.g. http://127.0.0.1:18080")
    username: str
    password_file: Path
    home: Path
    venv: Path
    dags_folder: Path
    storage_root: Path = Field(description="the pipelines' local storage target")
    log_dir: Path
    version: str

    def password(self) -> str:
        """The API user's password."""
        return _read(self.password_file)


class StackInfo(BaseModel):
    """Everything the local stack offers; a service not brought up is None."""

    stack_dir: Path
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    vault_dev: VaultInfo | None = None
    vault_raft: VaultInfo | None = None
    site: SiteInfo | None = None
    postgres: PostgresInfo | None = None
    airflow: AirflowInfo | None = None
    apptainer: ApptainerInfo | None = None

    def vault(self, flavour: Literal["dev", "raft"] | None = None) -> VaultInfo:
        """The dev server by default, else the raft one; ``LookupError`` if it was never started."""
        found = {"dev": self.vault_dev, "raft": self.vault_raft}
        order: list[Literal["dev", "raft"]] = [flavour] if flavour else ["dev", "raft"]
        for name in order:
            info = found[name]
            if info is not None:
                return info
        raise LookupError(f"the stack has no OpenBao ({flavour or 'any flavour'}); run `python -m hpcwaas.stack up`")

    def save(self) -> Path:
        """Write ``<stack_dir>/stack.json`` (world-readable: it holds no secret)."""
        from hpcwaas.stack.process import write_file

        self.updated_at = datetime.now(UTC)
        path = self.stack_dir / STACK_JSON
        write_file(path, self.model_dump_json(indent=2) + "\n", 0o644)
        return path


def load_stack_info(stack_dir: Path | None = None) -> StackInfo:
    """Read ``stack.json``; ``stack_dir`` defaults to the ``HPCWAAS_STACK_DIR`` setting.

    Raises ``FileNotFoundError`` with what to run when the stack was never brought up.
    """
    if stack_dir is None:
        from hpcwaas.settings import get_settings

        stack_dir = get_settings().stack_dir
    path = Path(stack_dir) / STACK_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `python -m hpcwaas.stack up` first")
    return StackInfo.model_validate_json(path.read_text())
