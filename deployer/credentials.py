"""SSH credentials, referred to by id and resolved only when an operation needs them.

A credential reference is ``<user_id>/<key_id>``: the Vault path comes from
:meth:`hpcwaas.vault.Vault.ssh_key_path`. Every use goes through one
:class:`CredentialResolver`, made for the user a run acts for. Private keys stay in memory: they
reach a sandboxed Ansible run's own ``ssh-agent`` on standard input, or paramiko directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from deployer.errors import CredentialError
from hpcwaas.errors import HpcwaasError
from hpcwaas.ssh import SSHCredential
from hpcwaas.vault import Vault

#: Issues a short-lived credential (new key, certificate) for a site login: sites that trust a CA.
CertificateIssuer = Callable[[str], SSHCredential]


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


class CredentialResolver:
    """The one place a credential reference is resolved, always for one acting user.

    Every executor goes through it (the Ansible agents, the batch job's SSH session, the
    pipelines' key id), and it refuses a reference to a key the acting user does not own before
    anything reads Vault or connects. The gateway makes one per deployment (acting user: the
    developer) and per execution (the invoking scientist). ``acting_user=None`` is the standalone
    deployer's operator, who holds a Vault token of their own: only :meth:`for_operator` makes it.
    """

    def __init__(self, source: CredentialProvider | None, acting_user: str,
                 certificates: CertificateIssuer | None = None) -> None:
        if not acting_user:
            raise CredentialError("a credential resolver needs the user it acts for")
        self._source = source
        self.acting_user: str | None = acting_user
        self._certificates = certificates
        self._issued: dict[str, SSHCredential] = {}

    @classmethod
    def for_operator(cls, source: CredentialProvider | None) -> CredentialResolver:
        """A resolver for the standalone deployer CLI: any key its own Vault token can read."""
        resolver = cls(source, "operator")
        resolver.acting_user = None
        return resolver

    def key_id(self, credential_ref: str) -> str:
        """The key id of ``credential_ref``, once its owner is checked against the acting user."""
        owner, key = split_ref(credential_ref)
        if self.acting_user is not None and owner != self.acting_user:
            raise CredentialError(
                f"credential {credential_ref!r} does not belong to the user this run acts for",
                hint="a workflow uses only the keys the gateway binds (credential, run_credential): "
                "the deploying developer's and the invoking user's own",
            )
        return key

    def private_key(self, credential_ref: str) -> str:
        """The private key of one of the acting user's credentials (kept in memory only)."""
        self.key_id(credential_ref)
        if self._source is None:
            raise CredentialError(
                "this deployer has no credential provider; cannot use SSH credentials",
                hint="configure Vault (HPCWAAS_VAULT_ADDR, HPCWAAS_VAULT_TOKEN_FILE)",
            )
        return self._source.private_key(credential_ref)

    def credential(self, credential_ref: str, login: str) -> SSHCredential:
        """What a login as ``login`` with ``credential_ref`` uses: on a site that trusts the CA, a new
        key with a short-lived certificate for that login (one per resolver, i.e. per step of a
        run); else the stored key. The owner is checked first either way."""
        if self._certificates is None:
            return SSHCredential(self.private_key(credential_ref))
        self.key_id(credential_ref)
        if login not in self._issued:
            self._issued[login] = self._certificates(login)
        return self._issued[login]


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
