"""SSH credentials: the private half never leaves Vault, so no model here carries it out."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from gateway.schemas.common import Login, Name, ORMModel, RequestModel, SiteName


class SSHKeyCreate(RequestModel):
    name: Name | None = Field(default=None, description="Defaults to the key type and date.")
    type: Literal["ed25519", "rsa"] = "ed25519"
    # Two sizes only: generation runs in the request, and an odd size near 8192 bits takes
    # OpenSSL tens of seconds of CPU per request (found by schemathesis).
    bits: Literal[3072, 4096] = Field(default=4096, description="RSA only: 3072 or 4096 bits.")
    login: Login | None = Field(default=None, description="Default site user this key logs in as.")


class SSHKeyImport(RequestModel):
    name: Name | None = None
    private_key: SecretStr = Field(description="OpenSSH or PEM private key; stored only in Vault.")
    passphrase: SecretStr | None = None
    login: Login | None = None


class SSHKeyOut(ORMModel):
    id: str
    name: str
    key_type: str
    public_key: str
    fingerprint: str
    login: str | None
    origin: str
    created_at: datetime
    last_used_at: datetime | None


class SSHKeyCheck(RequestModel):
    site: SiteName
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")


class SSHKeyCheckResult(BaseModel):
    ok: Literal[True] = True
    site: str
    login: str
    remote_user: str
    scheduler_version: str
    host_key_fingerprint: str
