"""The isolation boundary untrusted operations run in: bubblewrap, as an unprivileged user.

A workflow's playbooks, its plugins and its lookups are a developer's code, and Ansible runs part
of every playbook on the controller (lookups, filters, ``delegate_to: localhost``, the local
connection). So a sandboxed command sees a root made of read-only system folders, the Python it
needs, the folders it is given read-only (the workflow's bundle, the profile) and one private
writable run folder; nothing of the gateway's home, database, Vault tokens, the stack's files or
other runs. It has its own PID, IPC and UTS namespaces, dies with its parent, and runs with no
capabilities and ``no_new_privs``.

Each sandbox also runs as an unprivileged uid of its own, from a pool (locked with ``flock`` so
that processes sharing a machine never hand out the same one): bwrap builds the mounts, then
``setpriv`` drops to that uid inside.

- A root caller takes the uid from :data:`UID_BASE`.. (no /etc/passwd entries needed).
- An unprivileged caller (the gateway as its own user) takes it from its subordinate ids
  (``/etc/subuid`` and ``/etc/subgid``, mapped by the setuid ``newuidmap``/``newgidmap`` of the
  ``uidmap`` package): a user namespace maps the caller to root and the run's uid to itself, so
  bwrap can build the mounts and the run's processes are a host uid that is not the gateway's.
  The run folder is handed to that uid inside the namespace and removed there afterwards.
- An unprivileged caller without subordinate ids runs bwrap in a user namespace as itself: it
  sees only what is bound, but its files are the caller's uid (a standalone developer's setup).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from deployer.errors import DeployerError

BWRAP = "bwrap"
SETPRIV = "setpriv"
UNSHARE = "unshare"
#: The uid range handed to sandboxes when the caller is root (no /etc/passwd entries needed).
#: The gateway's own user gets the next range as its subordinate ids (scripts/install-system.sh).
UID_BASE = 61000
UID_COUNT = 1000
_TMP = "/tmp"  # noqa: S108 - inside the sandbox: a tmpfs of its own
_SHM = "/dev/shm"  # noqa: S108 - likewise
_SUBIDS = (Path("/etc/subuid"), Path("/etc/subgid"))
# Inside the mapping namespace, as its root: give the run folder ($1) to the run's uid ($0), then
# bwrap; or remove the folder.
_HAND_OVER = 'chown -R "$0:$0" "$1" && shift && exec "$@"'
_REMOVE = 'rm -rf -- "$1"'
# System folders every sandbox reads (absent ones are skipped).
_SYSTEM_RO = ("/usr", "/etc/alternatives", "/etc/ssl", "/etc/ld.so.cache", "/etc/localtime",
              "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/ssh/ssh_config")


class SandboxError(DeployerError):
    """The sandbox cannot be set up on this machine."""

    code = "sandbox_unavailable"


@dataclass(frozen=True)
class Sandbox:
    """One sandbox: its private run folder (writable inside) and the uid its processes run as."""

    run_dir: Path
    uid: int
    drop_to_uid: bool  # setpriv to ``uid`` inside; else the caller's own uid in a user ns
    gid: int = -1  # the group inside (the uid's own number for a pool uid; the caller's otherwise)
    mapped: bool = False  # ``uid`` is a subordinate id of an unprivileged caller, mapped in a user ns

    @property
    def group(self) -> int:
        return self.uid if self.gid < 0 else self.gid

    def command(self, argv: Sequence[str], *, read_only: Sequence[Path] = (),
                env: Mapping[str, str] | None = None) -> list[str]:
        """The command line running ``argv`` inside the sandbox (the cwd is the run folder)."""
        return _bwrap_argv(self, argv, read_only, dict(env or {}))


def available() -> bool:
    """True when bubblewrap (and setpriv, for a root caller) are installed."""
    return shutil.which(BWRAP) is not None and (os.geteuid() != 0 or shutil.which(SETPRIV) is not None)


def _lock_dir() -> Path:
    """The caller's own folder of uid locks (one per user: pools of different users never overlap)."""
    folder = Path(tempfile.gettempdir()) / f"hpcwaas-sandbox-uids-{os.geteuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise SandboxError(f"{folder} is not a private folder of this user", hint=f"remove {folder}")
    return folder


@contextmanager
def _pool_uid(base: int = UID_BASE, count: int = UID_COUNT) -> Iterator[int]:
    """A uid of ``base``..``base + count`` no other sandbox on this machine holds, until the block ends."""
    folder = _lock_dir()
    start = os.getpid() % count  # spread processes over the pool: fewer lock attempts
    for i in range(count):
        uid = base + (start + i) % count
        fd = os.open(folder / str(uid), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        handle: IO[bytes] = os.fdopen(fd, "wb")  # held for the block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield uid
        finally:
            handle.close()
        return
    raise SandboxError(f"all {count} sandbox uids are in use", hint="wait for running operations to end")


def subordinate_ids() -> tuple[int, int] | None:
    """The caller's subordinate ids present in both /etc/subuid and /etc/subgid (start, count), when
    ``newuidmap`` and ``newgidmap`` can map them; None otherwise."""
    if shutil.which("newuidmap") is None or shutil.which("newgidmap") is None or shutil.which(UNSHARE) is None:
        return None
    names = {str(os.geteuid())}
    with contextlib.suppress(KeyError):
        names.add(pwd.getpwuid(os.geteuid()).pw_name)
    ranges = []
    for path in _SUBIDS:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        found = [(int(f[1]), int(f[2])) for f in (line.split(":") for line in lines)
                 if len(f) == 3 and f[0] in names and f[1].isdigit() and f[2].isdigit()]
        if not found:
            return None
        ranges.append(found[0])
    (uid_start, uid_count), (gid_start, gid_count) = ranges
    start, end = max(uid_start, gid_start), min(uid_start + uid_count, gid_start + gid_count)
    return (start, end - start) if end > start else None


def _in_mapping(uid: int, script: str, *args: str) -> list[str]:
    """Run ``script`` as root of a user namespace that maps the caller to root and ``uid`` to itself."""
    return [UNSHARE, f"--map-users={uid},{uid},1", f"--map-groups={uid},{uid},1", "--map-root-user", "--",
            "/bin/sh", "-c", script, str(uid), *args]


@contextmanager
def sandbox(prefix: str = "hpcwaas-sbx-") -> Iterator[Sandbox]:
    """A fresh sandbox with a private run folder (0700, the sandbox's own), removed afterwards."""
    if not available():
        raise SandboxError(
            "bubblewrap is not installed: untrusted operations cannot be isolated",
            hint="install it (Debian: apt-get install bubblewrap util-linux)",
        )
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if os.geteuid() == 0:
            with _pool_uid() as uid:
                os.chown(run_dir, uid, uid)
                yield Sandbox(run_dir, uid, drop_to_uid=True)
        elif (ids := subordinate_ids()) is not None:
            with _pool_uid(*ids) as uid:
                try:
                    yield Sandbox(run_dir, uid, drop_to_uid=True, mapped=True)
                finally:  # the run's files are its uid's: only root of the mapping can remove them
                    subprocess.run(_in_mapping(uid, _REMOVE, str(run_dir)), capture_output=True, check=False,
                                   timeout=300)
        else:
            yield Sandbox(run_dir, os.getuid(), drop_to_uid=False, gid=os.getgid())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def prepare(box: Sandbox, path: Path, content: str | None = None) -> Path:
    """Create a file (``content``) or folder (None) in the run folder, owned by the sandbox's uid."""
    if content is None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(content)
        path.chmod(0o600)
    if box.drop_to_uid and not box.mapped:  # a mapped uid gets the whole folder when the run starts
        current = path
        while current != box.run_dir and box.run_dir in current.parents:
            os.chown(current, box.uid, box.uid)
            current = current.parent
    return path


def chown_tree(box: Sandbox, root: Path) -> None:
    """Give the sandbox's uid a folder copied into its run folder (no-op in a user namespace)."""
    if not box.drop_to_uid or box.mapped:
        return
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, box.uid, box.uid)
        for name in files:
            os.chown(os.path.join(dirpath, name), box.uid, box.uid, follow_symlinks=False)


def _python_roots() -> list[Path]:
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.prefix)}
    return sorted(roots)


def _bwrap_argv(box: Sandbox, argv: Sequence[str], read_only: Sequence[Path], env: dict[str, str]) -> list[str]:
    made: set[str] = {"/"}
    args: list[str] = [BWRAP, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                       "--die-with-parent", "--new-session"]
    if not box.drop_to_uid:
        args.append("--unshare-user")

    def parents(target: str) -> None:
        # bwrap makes missing parents 0700 (root's when the caller is root): make them 0755 first.
        missing = []
        for parent in Path(target).parents:
            if str(parent) in made:
                break
            missing.append(str(parent))
        for folder in reversed(missing):
            args.extend(["--perms", "0755", "--dir", folder])
            made.add(folder)

    def bind(source: Path | str, target: str | None = None, *, writable: bool = False) -> None:
        dest = target or str(source)
        parents(dest)
        args.extend(["--bind" if writable else "--ro-bind", str(source), dest])
        made.add(dest)

    for name in _SYSTEM_RO:
        if os.path.exists(name):
            bind(name)
    for link in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{link}"):
            args.extend(["--symlink", os.readlink(f"/{link}"), f"/{link}"])
    args.extend(["--proc", "/proc", "--dev", "/dev"])
    for scratch in (_SHM, _TMP):  # Ansible's multiprocessing needs a writable /dev/shm
        args.extend(["--perms", "1777", "--tmpfs", scratch])
    made.update({"/proc", "/dev", _SHM, _TMP})
    for root in _python_roots() + [Path(p).resolve() for p in read_only]:
        if root.exists() and str(root) not in made:
            bind(root)
    bind(box.run_dir, writable=True)
    passwd = prepare(box, box.run_dir / ".sandbox" / "passwd",
                     f"hpcwaas-run:x:{box.uid}:{box.group}:hpcwaas sandbox:{box.run_dir}:/bin/sh\n")
    group = prepare(box, box.run_dir / ".sandbox" / "group", f"hpcwaas-run:x:{box.group}:\n")
    for path in (passwd, group):
        path.chmod(0o644)
    bind(passwd, "/etc/passwd")
    bind(group, "/etc/group")
    args.extend(["--chdir", str(box.run_dir), "--clearenv"])
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(box.run_dir),
                "LANG": "C.UTF-8", "USER": "hpcwaas-run", "LOGNAME": "hpcwaas-run"}
    for key, value in {**base_env, **env}.items():
        args.extend(["--setenv", key, value])
    args.append("--")
    if box.mapped:
        args[:0] = _in_mapping(box.uid, _HAND_OVER, str(box.run_dir))
    if box.drop_to_uid:
        args.extend([SETPRIV, f"--reuid={box.uid}", f"--regid={box.uid}", "--clear-groups", "--no-new-privs",
                     "--inh-caps=-all", "--bounding-set=-all", "--"])
    args.extend(argv)
    return args
