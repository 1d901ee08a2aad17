"""SSH credentials: private keys in Vault only, public halves and metadata in the database.

Creation writes the database row and the Vault secret as one unit: if either fails, neither is
left behind. Every use checks that the caller owns the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deployer.credentials import CredentialResolver, VaultCredentialProvider
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.persistence import repositories as repo
from gateway.persistence.models import Role, Site, SSHKey, User, new_id, utcnow
from gateway.schemas.ssh_keys import SSHKeyCheckResult, SSHKeyCreate, SSHKeyImport
from gateway.services import sites as site_service
from hpcwaas.errors import VaultError
from hpcwaas.slurm import Slurm
from hpcwaas.ssh import KeyPair, SSHCredential, SSHSession, connect, generate_keypair, import_private_key
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)


def _store(db: Session, vault: Vault, user: User, pair: KeyPair, name: str | None, login: str | None,
           origin: str) -> SSHKey:
    key_id = new_id()
    name = name or f"{pair.public.key_type.removeprefix('ssh-')}-{key_id[:8]}"
    if repo.ssh_key_by_name(db, user.id, name) is not None:
        raise Conflict(f"you already have a key named {name!r}", field="name")
    key = SSHKey(
        id=key_id,
        user_id=user.id,
        name=name,
        key_type=pair.public.key_type,
        public_key=pair.public.line,
        fingerprint=pair.public.fingerprint,
        login=login,
        origin=origin,
    )
    db.add(key)
    try:
        db.flush()  # the row (and its id) exists in the transaction before Vault is written
        vault.put_ssh_key(user.id, key.id, pair.private_key)
    except IntegrityError as exc:
        db.rollback()
        raise Conflict(f"you already have a key named {name!r}", field="name") from exc
    except BaseException:
        db.rollback()
        raise
    try:
        db.commit()
    except BaseException:
        db.rollback()
        # The row is gone; do not leave an orphaned private key in Vault.
        try:
            vault.delete_ssh_key(user.id, key.id)
        except VaultError:
            log.error("could not remove the Vault secret of key %s after a failed commit", key.id)
        raise
    log.info("ssh key %s (%s) %s for user %s", key.id, key.fingerprint, origin, user.username)
    return key


def generate(db: Session, vault: Vault, user: User, data: SSHKeyCreate) -> SSHKey:
    """Generate a key pair for the user; the private half goes to Vault only."""
    pair = generate_keypair(data.type, rsa_bits=data.bits)
    return _store(db, vault, user, pair, data.name, data.login, "generated")


def import_key(db: Session, vault: Vault, user: User, data: SSHKeyImport) -> SSHKey:
    """Import an existing private key (normalised, then kept in Vault only)."""
    passphrase = data.passphrase.get_secret_value() if data.passphrase else None
    pair = import_private_key(data.private_key.get_secret_value(), passphrase)
    return _store(db, vault, user, pair, data.name, data.login, "imported")


def get_owned(db: Session, user: User, key_id: str) -> SSHKey:
    """A key the caller owns. Another user's key is reported as absent: ids are not secrets,
    but neither is their existence anyone else's business."""
    # Mirrored by the join in runs._invoke_context (key.user_id == user.id).
    key = repo.ssh_key_by_id(db, key_id)
    if key is None or key.user_id != user.id:
        raise NotFound(f"you have no SSH key {key_id!r}", hint="list yours with 'waas ssh-keys list'")
    return key


def get_visible(db: Session, user: User, key_id: str) -> SSHKey:
    """A key the caller owns, or any key for an admin (metadata only)."""
    key = repo.ssh_key_by_id(db, key_id)
    if key is not None and user.role == Role.ADMIN:
        return key
    return get_owned(db, user, key_id)


def list_own(db: Session, user: User) -> Sequence[SSHKey]:
    return repo.ssh_keys_of(db, user.id)


def delete(db: Session, vault: Vault, user: User, key_id: str) -> None:
    """Delete a key: Vault first, so a failure there leaves the record (and key) intact."""
    key = get_owned(db, user, key_id)
    vault.delete_ssh_key(user.id, key.id)
    db.delete(key)
    db.commit()


def resolve_login(key: SSHKey, login: str | None) -> str:
    """The site account a use of ``key`` logs in as: always the key's own login."""
    return site_account(key.login, login)


def site_account(key_login: str | None, requested: str | None) -> str:
    """The account comes from the key, never from the request: a request may repeat the key's
    login, and naming another (``root``, a colleague's) is refused before anything is stored."""
    if not key_login:
        raise InvalidInput(
            "this SSH key has no site login, so the gateway does not know which account it is for",
            hint="create or import the key with its login (waas ssh-keys create --login <your site user>)",
            field="login",
        )
    if requested and requested != key_login:
        raise InvalidInput(
            f"login {requested!r} is not the account of this key ({key_login!r}): a request cannot choose "
            "another site account",
            hint="leave 'login' out, or use a key made for that account (one of your own)",
            field="login",
        )
    return key_login


def resolver_for(vault: Vault, acting_user: str, site: Site, label: str,
                 ttl: int = 300) -> CredentialResolver:
    """The one resolver every use of a key goes through, for ``acting_user``: their own stored keys,
    or, on a site that trusts the gateway's CA, a new key with a certificate valid ``ttl`` seconds
    whose key id (logged by the site's sshd) is ``label``."""
    issuer = None
    if site.ssh_certificates:
        def issuer(login: str) -> SSHCredential:
            return vault.issue_ssh_credential(login, label, ttl)

    return CredentialResolver(VaultCredentialProvider(vault), acting_user, issuer)


@contextmanager
def site_session(
    db: Session, vault: Vault, user: User, site_name: str, key_id: str, login: str | None, timeout: float
) -> Iterator[tuple[Site, str, SSHSession]]:
    """An SSH session on a site as one of the caller's keys (ownership checked, host key pinned)."""
    key = get_owned(db, user, key_id)
    chosen = resolve_login(key, login)
    site = site_service.get(db, site_name)
    credential = resolver_for(vault, user.id, site, f"user:{user.id}").credential(f"{user.id}/{key.id}", chosen)
    with connect(site_service.endpoint(site), chosen, credential, timeout=timeout, umask=0o077) as session:
        del credential
        key.last_used_at = utcnow()
        db.commit()
        yield site, chosen, session


def check(db: Session, vault: Vault, user: User, key_id: str, site_name: str, login: str | None,
          timeout: float) -> SSHKeyCheckResult:
    """Log in to the site with the key and report who we are and the scheduler's version."""
    with site_session(db, vault, user, site_name, key_id, login, timeout) as (site, chosen, session):
        remote_user = session.run(["id", "-un"], check=True, timeout=30).stdout.strip()
        version = Slurm(session).version()
    return SSHKeyCheckResult(
        site=site.name,
        login=chosen,
        remote_user=remote_user,
        scheduler_version=version,
        host_key_fingerprint=site.host_key_fingerprint,
    )
