"""Vault access (OpenBao in development, HashiCorp Vault in production) through hvac.

The gateway holds a token whose policy is limited to its KV v2 mount. SSH private keys live at
``<mount>/users/<user_id>/ssh/<key_id>``; nothing else in hpcwaas stores them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from hpcwaas.errors import SecretNotFound, VaultError, VaultUnavailable
from hpcwaas.settings import Settings
from hpcwaas.ssh import SSHCredential, generate_keypair

T = TypeVar("T")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _check_id(kind: str, value: str) -> str:
    # Ids become path segments: refuse anything that could walk the Vault path tree.
    if not _ID.fullmatch(value) or ".." in value:
        raise VaultError(f"invalid {kind} id for a Vault path: {value!r}")
    return value


@contextmanager
def _vault_errors(addr: str, action: str) -> Iterator[None]:
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise VaultUnavailable(
            f"Vault is unreachable at {addr} while trying to {action}",
            hint="start it (make stack-up) or check HPCWAAS_VAULT_ADDR",
        ) from exc
    except hvac.exceptions.VaultDown as exc:
        raise VaultUnavailable(
            f"Vault at {addr} is sealed or down while trying to {action}",
            hint="unseal Vault (make stack-up unseals the local one)",
        ) from exc
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
        raise VaultUnavailable(
            f"Vault at {addr} refused the gateway's token while trying to {action}",
            hint="check HPCWAAS_VAULT_TOKEN_FILE and the token's policy",
        ) from exc
    except hvac.exceptions.InvalidPath as exc:
        raise SecretNotFound(f"no secret found while trying to {action}") from exc
    except hvac.exceptions.VaultError as exc:
        raise VaultError(f"Vault error while trying to {action}: {type(exc).__name__}") from exc


class Vault:
    """A thin, typed wrapper around the KV v2 mount the gateway owns."""

    def __init__(self, addr: str, token: str | None, mount: str = "hpcwaas", timeout: float = 5.0,
                 token_file: Path | None = None, ssh_mount: str = "hpcwaas-ssh", ssh_role: str = "runs") -> None:
        self.addr = addr
        self.mount = mount
        self.ssh_mount, self.ssh_role = ssh_mount, ssh_role
        self._token_file = token_file
        self._client = hvac.Client(url=addr, token=token, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        """Build a client from the settings (token from the setting or the token file)."""
        return cls(
            settings.vault_addr,
            settings.vault_token_value(),
            mount=settings.vault_mount,
            timeout=settings.vault_timeout,
            token_file=settings.vault_token_file if settings.vault_token is None else None,
            ssh_mount=settings.vault_ssh_mount,
            ssh_role=settings.vault_ssh_role,
        )

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """Run a Vault call; if the token was refused and the token file holds a newer one
        (an operator rotated it), switch to it and retry once."""
        try:
            with _vault_errors(self.addr, action):
                return fn()
        except VaultUnavailable as exc:
            if not isinstance(exc.__cause__, hvac.exceptions.Forbidden) or self._token_file is None:
                raise
            try:
                fresh = self._token_file.read_text().strip()
            except OSError:
                raise exc from None
            if not fresh or fresh == self._client.token:
                raise
            self._client.token = fresh
            with _vault_errors(self.addr, action):
                return fn()

    @staticmethod
    def ssh_key_path(user_id: str, key_id: str) -> str:
        """The path of one user's SSH private key inside the mount."""
        return f"users/{_check_id('user', user_id)}/ssh/{_check_id('key', key_id)}"

    def health(self) -> dict[str, Any]:
        """Vault's health (raises VaultUnavailable when it cannot be used)."""
        with _vault_errors(self.addr, "check its health"):
            status = self._client.sys.read_health_status(method="GET")
        body: dict[str, Any] = status if isinstance(status, dict) else status.json()
        if body.get("sealed"):
            raise VaultUnavailable(f"Vault at {self.addr} is sealed", hint="unseal it")
        return body

    def write(self, path: str, data: dict[str, str]) -> None:
        """Write a secret (a new KV v2 version)."""
        self._call(
            f"write {path}",
            lambda: self._client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=self.mount),
        )

    def read(self, path: str) -> dict[str, str]:
        """Read the latest version of a secret."""
        resp = self._call(
            f"read {path}",
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount, raise_on_deleted_version=True
            ),
        )
        data: dict[str, str] = resp["data"]["data"]
        return data

    def delete(self, path: str) -> None:
        """Delete a secret and all its versions (idempotent)."""
        try:
            self._call(
                f"delete {path}",
                lambda: self._client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=self.mount),
            )
        except SecretNotFound:
            return

    def wrap(self, path: str, ttl: str = "300s") -> str:
        """Read a secret into a single-use response-wrapping token (for pipelines)."""
        resp = self._call(
            f"wrap {path}",
            lambda: self._client.adapter.get(f"/v1/{self.mount}/data/{path}", headers={"X-Vault-Wrap-TTL": ttl}),
        )
        token: str = resp["wrap_info"]["token"]
        return token

    def wrap_data(self, data: dict[str, str], ttl: str = "300s") -> str:
        """Put ``data`` (made here, not stored) into a single-use response-wrapping token."""
        resp = self._call(
            "wrap a credential",
            lambda: self._client.adapter.post("/v1/sys/wrapping/wrap", json=data, headers={"X-Vault-Wrap-TTL": ttl}),
        )
        token: str = resp["wrap_info"]["token"]
        return token

    # SSH certificates ---------------------------------------------------------------------

    def sign_ssh_key(self, public_key: str, principal: str, key_id: str, ttl_seconds: int) -> str:
        """A user certificate from Vault's SSH CA: valid for ``principal`` only, for ``ttl_seconds``,
        its key id (logged by the site's sshd at every login) ``key_id``."""
        resp = self._call(
            f"sign an SSH certificate for {principal}",
            lambda: self._client.adapter.post(
                f"/v1/{self.ssh_mount}/sign/{self.ssh_role}",
                json={"public_key": public_key, "valid_principals": principal, "cert_type": "user",
                      "key_id": key_id, "ttl": f"{int(ttl_seconds)}s"}),
        )
        certificate: str = resp["data"]["signed_key"]
        return certificate.strip()

    def issue_ssh_credential(self, principal: str, key_id: str, ttl_seconds: int) -> SSHCredential:
        """A fresh key pair (kept in memory only) and its short-lived certificate."""
        pair = generate_keypair()
        return SSHCredential(pair.private_key, self.sign_ssh_key(pair.public.line, principal, key_id, ttl_seconds))

    def ssh_ca_public_key(self) -> str:
        """The CA's public key, as a site's ``TrustedUserCAKeys`` line."""
        resp = self._call("read the SSH CA's public key",
                          lambda: self._client.adapter.get(f"/v1/{self.ssh_mount}/config/ca"))
        key: str = resp["data"]["public_key"]
        return key.strip()

    # SSH keys -----------------------------------------------------------------------------

    def put_ssh_key(self, user_id: str, key_id: str, private_key: str) -> None:
        """Store a user's SSH private key."""
        self.write(self.ssh_key_path(user_id, key_id), {"private_key": private_key})

    def get_ssh_key(self, user_id: str, key_id: str) -> str:
        """Fetch a user's SSH private key (keep it in memory only)."""
        return self.read(self.ssh_key_path(user_id, key_id))["private_key"]

    def delete_ssh_key(self, user_id: str, key_id: str) -> None:
        """Remove a user's SSH private key."""
        self.delete(self.ssh_key_path(user_id, key_id))


def unwrap(addr: str, wrap_token: str, timeout: float = 5.0) -> dict[str, Any]:
    """Unwrap a response-wrapping token once and return the wrapped secret's data."""
    client = hvac.Client(url=addr, token=wrap_token, timeout=timeout)
    with _vault_errors(addr, "unwrap a single-use token"):
        resp = client.sys.unwrap()
    data: dict[str, Any] = resp["data"]
    inner: dict[str, Any] = data.get("data", data)  # KV v2 nests the secret one level deeper
    return inner
