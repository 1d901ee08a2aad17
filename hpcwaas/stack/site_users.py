"""The stack's Unix accounts (created by scripts/install-system.sh): the site's users, with their
authorized_keys, and the unprivileged user the gateway runs as."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hpcwaas.stack.process import INSTALL_HINT, StackError, run

SITE_USERS = ("sciuser1", "sciuser2")
GATEWAY_USER = "hpcwaas"  # the gateway's own system user: never root, never a site user


@dataclass(frozen=True)
class Account:
    """A site account as the OS knows it."""

    name: str
    uid: int
    gid: int
    home: Path


def account(name: str) -> Account:
    """Look up a site user; StackError if it is not one of ours or does not exist."""
    if name not in SITE_USERS:
        raise StackError(f"{name!r} is not a site user of the stack (those are {', '.join(SITE_USERS)})")
    try:
        pw = pwd.getpwnam(name)
    except KeyError as exc:
        raise StackError(f"site user {name} does not exist", hint=INSTALL_HINT) from exc
    return Account(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def check_accounts() -> list[Account]:
    """All site accounts, or StackError naming the install script."""
    return [account(name) for name in SITE_USERS]


def validate_public_key(line: str) -> str:
    """Return the one OpenSSH public key line in ``line`` after ``ssh-keygen -l`` accepted it."""
    lines = [x.strip() for x in line.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    if len(lines) != 1:
        raise StackError(f"expected exactly one public key line, got {len(lines)}")
    key = lines[0]
    # Options before the key type ("command=...,no-pty ssh-ed25519 ...") are refused on purpose:
    # the stack only grants plain logins.
    if not key.startswith(("ssh-", "ecdsa-", "sk-")):
        raise StackError("the key line must start with its type (e.g. ssh-ed25519); options are not accepted")
    with tempfile.NamedTemporaryFile("w", suffix=".pub") as tmp:
        tmp.write(key + "\n")
        tmp.flush()
        run(["ssh-keygen", "-l", "-f", tmp.name], what="ssh-keygen -l (public key check)",
            hint="pass an OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub")
    return key


def _open_no_follow_dir(path: Path, acct: Account) -> int:
    """Open (creating if needed) a directory owned by the user without following symlinks."""
    try:
        os.mkdir(path, 0o700)
        os.chown(path, acct.uid, acct.gid)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    info = os.fstat(fd)
    if info.st_uid != acct.uid:
        os.close(fd)
        raise StackError(f"{path} is not owned by {acct.name}; refusing to write into it")
    os.fchmod(fd, 0o700)
    return fd


def authorize_key(user: str, public_key: str) -> bool:
    """Append ``public_key`` to the user's ~/.ssh/authorized_keys; False if it was already there.

    Written as root into a directory the user controls, so nothing follows a symlink the user
    may have planted (``O_NOFOLLOW`` on ~/.ssh and on the file), and the file stays the user's, 0600.
    """
    key = validate_public_key(public_key)
    key_id = " ".join(key.split()[:2])  # type and blob: the comment does not make another key
    acct = account(user)
    dir_fd = _open_no_follow_dir(acct.home / ".ssh", acct)
    try:
        fd = os.open(
            "authorized_keys",
            os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StackError(f"{acct.home}/.ssh/authorized_keys is not a regular file")
            os.fchown(fd, acct.uid, acct.gid)
            os.fchmod(fd, 0o600)
            with os.fdopen(os.dup(fd), "rb") as existing:
                content = existing.read().decode(errors="replace")
            present = {" ".join(x.split()[:2]) for x in content.splitlines() if x.strip()}
            if key_id in present:
                return False
            prefix = "" if not content or content.endswith("\n") else "\n"
            os.write(fd, f"{prefix}{key}\n".encode())
            return True
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def revoke_key(user: str, public_key: str) -> bool:
    """Remove a public key from the user's authorized_keys; False if it was not there."""
    key_id = " ".join(validate_public_key(public_key).split()[:2])
    acct = account(user)
    dir_fd = _open_no_follow_dir(acct.home / ".ssh", acct)
    try:
        try:
            fd = os.open("authorized_keys", os.O_RDWR | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        with os.fdopen(fd, "r+") as handle:
            lines = handle.read().splitlines(keepends=True)
            kept = [x for x in lines if " ".join(x.split()[:2]) != key_id]
            if len(kept) == len(lines):
                return False
            handle.seek(0)
            handle.truncate()
            handle.write("".join(kept))
        return True
    finally:
        os.close(dir_fd)
