"""The isolation boundary untrusted operations run in: bubblewrap, as an unprivileged user.

A workflow's playbooks, its plugins and its lookups are a developer's code, and Ansible runs part
of every playbook on the controller (lookups, filters, ``delegate_to: localhost``, the local
connection). So a sandboxed command sees a root made of read-only system folders, the Python it
needs, the folders it is given read-only (the workflow's bundle, the profile) and one private
writable run folder; nothing of the gateway's home, database, Vault tokens, the stack's files or
other runs. It has its own PID, IPC and UTS namespaces, dies with its parent, and runs with no
capabilities and ``no_new_privs``.

When the caller is root, each sandbox also gets an unprivileged uid of its own from a pool
(locked with ``flock`` so that processes sharing a machine never hand out the same one): bwrap
builds the mounts as root, then ``setpriv`` drops to that uid inside. Otherwise (an unprivileged
gateway) bwrap runs in a user namespace as the caller, who sees only what is bound.
"""

from __future__ import annotations

import fcntl
import os
import shutil
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
#: The uid range handed to sandboxes when the caller is root (no /etc/passwd entries needed).
UID_BASE = 61000
UID_COUNT = 2000
_TMP = "/tmp"  # noqa: S108 - inside the sandbox: a tmpfs of its own
_SHM = "/dev/shm"  # noqa: S108 - likewise
_LOCK_DIR = Path(tempfile.gettempdir()) / "hpcwaas-sandbox-uids"
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
    drop_to_uid: bool  # root caller: setpriv to ``uid`` inside; else the caller's own uid in a user ns
    gid: int = -1  # the group inside (the uid's own number for a pool uid; the caller's otherwise)

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


@contextmanager
def _pool_uid() -> Iterator[int]:
    """A uid no other sandbox on this machine holds, until the block ends."""
    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    start = os.getpid() % UID_COUNT  # spread processes over the pool: fewer lock attempts
    for i in range(UID_COUNT):
        uid = UID_BASE + (start + i) % UID_COUNT
        handle: IO[bytes] = open(_LOCK_DIR / str(uid), "wb")  # held for the block
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
    raise SandboxError(f"all {UID_COUNT} sandbox uids are in use", hint="wait for running operations to end")


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
    if box.drop_to_uid:
        current = path
        while current != box.run_dir and box.run_dir in current.parents:
            os.chown(current, box.uid, box.uid)
            current = current.parent
    return path


def chown_tree(box: Sandbox, root: Path) -> None:
    """Give the sandbox's uid a folder copied into its run folder (no-op in a user namespace)."""
    if not box.drop_to_uid:
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
    if box.drop_to_uid:
        args.extend([SETPRIV, f"--reuid={box.uid}", f"--regid={box.uid}", "--clear-groups", "--no-new-privs",
                     "--inh-caps=-all", "--bounding-set=-all", "--"])
    args.extend(argv)
    return args
