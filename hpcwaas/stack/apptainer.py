"""The Apptainer builder: a Debian sid tree with Apptainer, entered with pivot_root.

Apptainer is not packaged for bookworm and the sid package needs a newer glibc, so the stack
debootstraps a sid tree once (``<stack_dir>/apptainer/sid``, ~2 min cold, then reused) with
apptainer, squashfs-tools, debootstrap and e2fsprogs, and creates a non-root build user in it.

Two ways in, both through ``pivot_root`` in a private mount namespace (apptainer refuses a plain
chroot, and as root it fails here because root's bounding set lacks CAP_SYS_RESOURCE):

- :meth:`SidTree.command` (root only; what the image builder uses): ``unshare -m``, bind mounts,
  ``pivot_root``, then ``runuser`` to the build user, who runs ``apptainer build --fakeroot``
  with the subordinate ids of the tree's ``/etc/subuid``.
- the site wrapper ``<stack_dir>/apptainer/bin/apptainer`` (linked as ``/usr/local/bin/apptainer``
  when that name is free), for any *non-root* user, no setuid: a user namespace maps the caller
  to root just long enough to bind ``/home``, ``/tmp``, ``/proc``, ``/sys``, ``/dev`` and the host's
  ``/etc/passwd`` and ``/etc/group`` into the tree and ``pivot_root``; a second, nested user
  namespace maps the caller back to their own uid before ``apptainer`` starts. Slurm jobs of the
  site users run ``apptainer exec image.sif cmd`` with it. Without FUSE for non-root users,
  apptainer unpacks the SIF to a temporary sandbox on each run ("Converting SIF file...").
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpcwaas.stack.base import ProcessStatus, Service, register
from hpcwaas.stack.info import ApptainerInfo, StackInfo
from hpcwaas.stack.process import Daemon, StackError, ensure_dir, run, tail, write_file
from hpcwaas.stack.site_users import GATEWAY_USER

MIRROR = "http://deb.debian.org/debian"
SUITE = "sid"
TREE_PACKAGES = ("apptainer", "squashfs-tools", "debootstrap", "e2fsprogs")
BUILD_USER = "hpcbuild"
BUILD_UID = 7701
BUILDS_INSIDE = "/build"
# What the site wrapper shows of the host inside the tree (both exist in a debootstrapped tree).
SITE_BINDS = ("/home", "/tmp")  # noqa: S108 - bind-mounted into the tree, not written to
SITE_COMMAND = Path("/usr/local/bin/apptainer")
# The build helper (containers/build_helper.py) as a root-owned command with the builder folder
# fixed, and the sudo rule that lets the gateway's user, and no one else, run it.
IMAGE_BUILD_HELPER = Path("/usr/local/libexec/hpcwaas-image-build")
SUDO_RULE = Path("/etc/sudoers.d/hpcwaas-image-build")
PREPARE_TIMEOUT = 1200.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as root in a fresh, private mount namespace (``unshare -m``); arguments are positional,
# never interpolated: $1 tree, $2 working directory inside, $3 user, then NAME=VALUE... -- argv.
_ENTER_AS_ROOT = r"""
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
root=$1; cwd=$2; user=$3; shift 3
mount --make-rprivate /
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
cd "$cwd"
exec /usr/sbin/runuser -u "$user" -- /usr/bin/env -i "$@"
"""

_SITE_WRAPPER = """\
#!/bin/sh
# Apptainer from the hpcwaas builder tree, for non-root users (no setuid). Written by
# hpcwaas.stack (apptainer service); edits are overwritten on `up`.
# Paths visible inside: {binds} (and the image must be under one of them).
root={root}
if [ "$(id -u)" = 0 ]; then
    echo "apptainer (hpcwaas wrapper): run it as a non-root user" >&2
    exit 1
fi
uid=$(id -u); gid=$(id -g); cwd=$(pwd)
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH; export PATH
exec unshare --user --map-root-user --mount --propagation private -- /bin/sh -euc '
root=$1; uid=$2; gid=$3; cwd=$4; shift 4
mount --rbind "$root" "$root"
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
{bind_lines}
mount --bind /etc/passwd "$root/etc/passwd"
mount --bind /etc/group "$root/etc/group"
cd "$root"
pivot_root . .oldroot
umount -l /.oldroot
cd "$cwd" 2>/dev/null || cd /
exec unshare --user --map-user="$uid" --map-group="$gid" -- /usr/bin/env PATH={path} apptainer "$@"
' sh "$root" "$uid" "$gid" "$cwd" "$@"
"""


@dataclass(frozen=True)
class SidTree:
    """The prepared tree and how to run a command in it as the build user (root only)."""

    root: Path
    user: str = BUILD_USER

    @property
    def ready_file(self) -> Path:
        return self.root.parent / "ready.json"

    def ready(self) -> bool:
        """Whether the tree was prepared completely (the marker is written last)."""
        return self.ready_file.exists() and (self.root / "usr" / "bin" / "apptainer").exists()

    def version(self) -> str:
        """The tree's apptainer version, e.g. ``apptainer version 1.4.5``."""
        return str(json.loads(self.ready_file.read_text())["apptainer_version"])

    def host_path(self, inside: str) -> Path:
        """Where a path inside the tree is on the host."""
        return self.root / inside.lstrip("/")

    def command(self, argv: list[str], *, cwd: str = "/", env: dict[str, str] | None = None) -> list[str]:
        """The host argv that runs ``argv`` inside the tree as the build user, in ``cwd`` (inside).

        The environment is exactly ``PATH``, ``LANG``, ``HOME`` and ``env``: nothing of the
        caller's environment (tokens, passwords) reaches the build or its log.
        """
        variables = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": f"/home/{self.user}", **(env or {})}
        assignments = [f"{k}={v}" for k, v in variables.items()]
        return ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c", _ENTER_AS_ROOT, "sh",
                str(self.root), cwd, self.user, *assignments, *argv]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in our namespace, deepest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


@register
class Apptainer(Service):
    """Prepares the builder tree once; no daemon (``down`` keeps the tree)."""

    name = "apptainer"
    description = "Apptainer builder (Debian sid tree)"
    requires = ("debootstrap", "unshare", "pivot_root", "runuser", "chroot")

    @property
    def tree(self) -> SidTree:
        return SidTree(self.dir / "sid")

    @property
    def wrapper(self) -> Path:
        return self.dir / "bin" / "apptainer"

    @property
    def log_file(self) -> Path:
        return self.dir / "prepare.log"

    def daemons(self) -> list[Daemon]:
        return []

    def status(self) -> list[ProcessStatus]:
        state = "ready" if self.tree.ready() else "stopped"
        return [ProcessStatus(self.name, "sid-tree", state, None, str(self.tree.root))]

    def healthy(self) -> bool:
        return self.tree.ready()

    def up(self) -> bool:
        ensure_dir(self.dir, 0o755)
        reused = self.tree.ready()
        if not reused:
            self._prepare()
        self._install_wrapper()
        self._install_build_helper()
        return reused

    def _prepare(self) -> None:
        partial = self.dir / "sid.partial"
        self._remove(partial)  # a prepare that was interrupted starts over
        self._remove(self.tree.root)
        self.tree.ready_file.unlink(missing_ok=True)
        began = time.monotonic()
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(TREE_PACKAGES)}", SUITE, str(partial),
                 MIRROR],
                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, timeout=PREPARE_TIMEOUT, check=False,
                env={"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"},
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"debootstrap of the sid tree did not finish in {PREPARE_TIMEOUT:.0f}s",
                             hint=f"see {self.log_file}") from exc
        finally:
            os.close(fd)
            self._unmount(partial)  # debootstrap leaves /proc mounted in the target
        if proc.returncode != 0:
            raise StackError(f"debootstrap of the sid tree failed (exit {proc.returncode}):\n{tail(self.log_file)}",
                             hint=f"check that {MIRROR} is reachable; log: {self.log_file}")
        write_file(partial / "etc" / "hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)
        run(["chroot", str(partial), "useradd", "--uid", str(BUILD_UID), "--user-group", "--create-home",
             "--shell", "/bin/sh", BUILD_USER], what="useradd (build user in the sid tree)")
        ensure_dir(partial / BUILDS_INSIDE.lstrip("/"), 0o755)
        ensure_dir(partial / ".oldroot", 0o755)
        version = run(["chroot", str(partial), "apptainer", "--version"], what="apptainer --version").stdout.strip()
        partial.rename(self.tree.root)
        # Prove the way in works before declaring the tree ready.
        run(self.tree.command(["apptainer", "--version"]), what="apptainer in the sid tree (pivot_root)",
            hint=f"see {self.log_file}")
        write_file(self.tree.ready_file, json.dumps({
            "apptainer_version": version,
            "suite": SUITE,
            "mirror": MIRROR,
            "prepared_seconds": round(time.monotonic() - began, 1),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2) + "\n", 0o644)

    def _install_wrapper(self) -> None:
        ensure_dir(self.wrapper.parent, 0o755)
        binds = "\n".join(f'mount --rbind {b} "$root{b}"' for b in SITE_BINDS)
        text = _SITE_WRAPPER.format(root=shlex.quote(str(self.tree.root)), bind_lines=binds,
                                    binds=", ".join(SITE_BINDS), path=PATH)
        if not self.wrapper.exists() or self.wrapper.read_text() != text:
            write_file(self.wrapper, text, 0o755)
        # A name on every user's PATH, but never over an apptainer that is not ours.
        if SITE_COMMAND.is_symlink() and os.readlink(SITE_COMMAND) != str(self.wrapper):
            return
        if not SITE_COMMAND.exists() and not SITE_COMMAND.is_symlink():
            ensure_dir(SITE_COMMAND.parent, 0o755)
            SITE_COMMAND.symlink_to(self.wrapper)

    def _install_build_helper(self) -> None:
        """The helper the unprivileged gateway builds through, and its sudo rule (when sudo is here)."""
        python = Path(sys.executable)
        text = (f"#!/bin/sh\n# Written by hpcwaas.stack (apptainer service): the image build helper, whose contract\n"
                f"# is in containers/build_helper.py. The builder folder is fixed here, not by the caller.\n"
                f"exec {shlex.quote(str(python))} -I -m containers.build_helper {shlex.quote(str(self.dir))} \"$@\"\n")
        ensure_dir(IMAGE_BUILD_HELPER.parent, 0o755)
        if not IMAGE_BUILD_HELPER.exists() or IMAGE_BUILD_HELPER.read_text() != text:
            write_file(IMAGE_BUILD_HELPER, text, 0o755)
        if shutil.which("visudo") is None:
            return  # no sudo: only root can build (Builder.status says so)
        rule = (f"# Written by hpcwaas.stack: the gateway's user may run the image build helper as root.\n"
                f"Defaults!{IMAGE_BUILD_HELPER} !use_pty, !syslog\n"
                f"{GATEWAY_USER} ALL=(root) NOPASSWD: {IMAGE_BUILD_HELPER}\n")
        if SUDO_RULE.exists() and SUDO_RULE.read_text() == rule:
            return
        staged = SUDO_RULE.with_name(".hpcwaas-image-build.new")
        write_file(staged, rule, 0o440)
        run(["visudo", "-cq", "-f", str(staged)], what="visudo (the image build helper's sudo rule)")
        staged.rename(SUDO_RULE)

    def site_command(self) -> Path:
        """What site users run: the /usr/local/bin link when it is ours, else the wrapper itself."""
        if SITE_COMMAND.is_symlink() and os.readlink(SITE_COMMAND) == str(self.wrapper):
            return SITE_COMMAND
        return self.wrapper

    @staticmethod
    def _unmount(path: Path) -> None:
        if path.exists():
            for point in _mounts_under(path):
                run(["umount", "-l", point], check=False)

    def _remove(self, path: Path) -> None:
        if path.exists():
            self._unmount(path)
            if _mounts_under(path):
                raise StackError(f"{path} still has mounts; refusing to delete it")
            shutil.rmtree(path)

    def down(self) -> list[str]:
        return []  # nothing runs; the tree is kept

    def describe(self, info: StackInfo) -> None:
        if not self.tree.ready():
            return
        info.apptainer = ApptainerInfo(
            tree=self.tree.root,
            version=self.tree.version(),
            build_user=BUILD_USER,
            build_uid=BUILD_UID,
            builds_dir=BUILDS_INSIDE,
            mirror=MIRROR,
            site_command=self.site_command(),
            site_binds=list(SITE_BINDS),
        )
