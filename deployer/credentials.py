"""SSH credentials, referred to by id and resolved only when an operation needs them.

A credential reference is ``<user_id>/<key_id>``: the Vault path comes from
:meth:`hpcwaas.vault.Vault.ssh_key_path`. Private keys stay in memory: they are loaded into a
private per-run ``ssh-agent`` (:class:`AgentPool`) for Ansible, or handed to paramiko directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

from deployer.errors import CredentialError
from hpcwaas.errors import HpcwaasError
from hpcwaas.vault import Vault


class CredentialProvider(Protocol):
    """Turns a credential reference into a private key (kept in memory only)."""

    def private_key(self, credential_ref: str) -> str:
        """The OpenSSH private key for ``credential_ref``."""


def split_ref(credential_ref: str) -> tuple[str, str]:
    """``user/key`` (an optional ``vault:`` prefix is allowed) as (user_id, key_id)."""
    ref = credential_ref.removeprefix("vault:")
    user, sep, key = ref.partition("/")
    if not sep or not user or not key:
        raise CredentialError(f"credential reference {credential_ref!r} must look like '<user_id>/<key_id>'")
    return user, key


class VaultCredentialProvider:
    """Keys from Vault at ``users/<user_id>/ssh/<key_id>``."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def private_key(self, credential_ref: str) -> str:
        """Read the key from Vault."""
        user, key = split_ref(credential_ref)
        try:
            return self.vault.get_ssh_key(user, key)
        except HpcwaasError as exc:
            raise CredentialError(f"cannot read credential {credential_ref!r}: {exc.message}", hint=exc.hint) from exc


class StaticCredentialProvider:
    """Keys given in memory (tests, or a caller that already fetched them)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = dict(keys)

    def private_key(self, credential_ref: str) -> str:
        """The key registered for the reference."""
        try:
            return self._keys[credential_ref]
        except KeyError as exc:
            raise CredentialError(f"unknown credential {credential_ref!r}") from exc

    def __repr__(self) -> str:
        return f"StaticCredentialProvider({sorted(self._keys)})"


class AgentPool:
    """One private ``ssh-agent`` per credential for the duration of a run.

    The agent's socket lives in a 0700 temporary folder; the key reaches it through
    ``ssh-add -`` on standard input, so it never touches disk or a command line.
    """

    def __init__(self, provider: CredentialProvider | None) -> None:
        self.provider = provider
        self._agents: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._lock = threading.Lock()
        self._dir: Path | None = None

    def socket_for(self, credential_ref: str) -> Path:
        """The agent socket holding this credential's key (started on first use)."""
        with self._lock:
            if credential_ref in self._agents:
                return self._agents[credential_ref][1]
            if self.provider is None:
                raise CredentialError(
                    "this deployer has no credential provider; cannot use SSH credentials",
                    hint="configure Vault (HPCWAAS_VAULT_ADDR, HPCWAAS_VAULT_TOKEN_FILE)",
                )
            key = self.provider.private_key(credential_ref)
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="hpcwaas-agent-"))
                os.chmod(self._dir, 0o700)
            sock = self._dir / f"agent-{len(self._agents)}.sock"
            proc = subprocess.Popen(
                ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 5
            while not sock.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise CredentialError("ssh-agent did not start")
                time.sleep(0.01)
            env = {"SSH_AUTH_SOCK": str(sock), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            added = subprocess.run(
                ["ssh-add", "-q", "-"], input=key.encode(), env=env, capture_output=True, timeout=30, check=False
            )
            if added.returncode != 0:
                proc.kill()
                raise CredentialError(
                    f"the key of credential {credential_ref!r} could not be loaded into ssh-agent",
                    hint="is it an unencrypted OpenSSH private key?",
                )
            self._agents[credential_ref] = (proc, sock)
            return sock

    def close(self) -> None:
        """Stop the agents and remove their sockets."""
        with self._lock:
            for proc, _sock in self._agents.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            self._agents.clear()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
