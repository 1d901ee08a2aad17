"""Credentials inside a task: a single-use Vault wrapping token in, an SSH session out.

The gateway reads the caller's SSH key into a Vault *response-wrapping* token (single use, short
TTL) and puts only that token in the DAG run's ``conf``, next to ids and paths. The task unwraps it
here, as its first step, keeps the key in memory for the life of one connection, and never logs,
returns or pushes it. Once unwrapped (or expired) the token is worthless, so a ``conf`` that
leaks through Airflow's database or logs gives nothing away. :func:`burn` consumes a token that
was never used (a cancelled or failed run) for the same reason.

The host key comes from the site's registration (pinned); :func:`hpcwaas.ssh.connect` refuses any
other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, Field, field_validator

from data_logistics.errors import CredentialUnavailable
from hpcwaas.errors import VaultError, VaultUnavailable
from hpcwaas.ssh import SiteEndpoint, SSHCredential, SSHSession, connect, parse_public_key
from hpcwaas.vault import unwrap

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{8,512}$")


class SiteRef(BaseModel):
    """Everything a task needs to reach a site as one user; no secret but the single-use token."""

    site: str = Field(description="the site's registered name (for messages and records)")
    host: str
    port: int = Field(ge=1, le=65535)
    host_key: str = Field(description="the pinned host key, `<type> <base64>`")
    login: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    work_dir: str = Field(description="absolute; every path of the run stays inside it")
    key_id: str = Field(description="the SSH key's id (not the key)")
    vault_addr: str
    wrap_token: str = Field(description="single-use Vault response-wrapping token holding the key", repr=False)

    @field_validator("host_key")
    @classmethod
    def _valid_host_key(cls, value: str) -> str:
        return parse_public_key(value).line

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\0" in value or "\n" in value:
            raise ValueError("work_dir must be an absolute path")
        return value.rstrip("/") or "/"

    @field_validator("wrap_token")
    @classmethod
    def _token_shape(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError("wrap_token is not a Vault token")
        return value

    @property
    def endpoint(self) -> SiteEndpoint:
        return SiteEndpoint(self.host, self.port, self.host_key)

    def public(self) -> dict[str, object]:
        """The reference without its token (for results and logs)."""
        return self.model_dump(exclude={"wrap_token", "vault_addr"})


def unwrap_credential(vault_addr: str, wrap_token: str) -> SSHCredential:
    """The SSH credential inside a wrapping token (a stored key, or a per-run key and its
    certificate); the token is spent by this call."""
    try:
        data = unwrap(vault_addr, wrap_token)
    except VaultUnavailable as exc:
        # Vault refuses an unknown token as "permission denied": spent, expired, or forged.
        raise CredentialUnavailable(
            "the run's single-use credential token was already used, has expired, or is not valid",
            hint="start a new run: each run gets a fresh token from the gateway",
        ) from exc
    except VaultError as exc:
        raise CredentialUnavailable(
            "the run's single-use credential token could not be unwrapped (already used or expired)",
            hint="start a new run: each run gets a fresh token from the gateway",
        ) from exc
    key, certificate = data.get("private_key"), data.get("certificate")
    if not isinstance(key, str):
        raise CredentialUnavailable("the wrapped secret holds no SSH private key")
    return SSHCredential(key, certificate if isinstance(certificate, str) else None)


def burn(vault_addr: str, wrap_token: str) -> bool:
    """Spend a wrapping token without using its secret; True if it was still valid."""
    try:
        unwrap(vault_addr, wrap_token)
    except VaultError:
        return False
    return True


@contextmanager
def site_session(ref: SiteRef, timeout: float = 10.0) -> Iterator[SSHSession]:
    """Unwrap the key, open a host-key-verified session, and forget the key."""
    private_key = unwrap_credential(ref.vault_addr, ref.wrap_token)
    with connect(ref.endpoint, ref.login, private_key, timeout=timeout) as session:
        del private_key  # the connection is authenticated; the key is not kept
        log.info("connected to %s (%s) as %s with key %s", ref.site, ref.endpoint.label, ref.login, ref.key_id)
        yield session
