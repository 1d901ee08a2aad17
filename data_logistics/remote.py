"""Remote side of a transfer: streamed commands over one SSH connection, and path confinement.

Every command is an argument list. Where a pipe or a ``&&`` is needed, the shell program is a
constant written here and user values reach it only as positional parameters (``"$1"``), so
nothing a user sends is ever parsed by a shell.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

from data_logistics.errors import InvalidTransfer, PathOutsideWorkDir, StagingError
from hpcwaas.errors import RemoteCommandFailed, SSHError
from hpcwaas.ssh import SSHSession

CHUNK = 1024 * 1024
# Large receive window for downloads (the server's window governs uploads).
_WINDOW = 64 * 1024 * 1024


def _transport(session: SSHSession) -> paramiko.Transport:
    # SSHSession keeps its paramiko client private; streaming needs raw channels on its transport.
    transport = session._client.get_transport()
    if transport is None or not transport.is_active():
        raise SSHError("the SSH connection is closed", host=session.endpoint.label)
    return transport


def sh(script: str, *args: str) -> list[str]:
    """An argv running a constant shell ``script`` with ``args`` as its positional parameters."""
    return ["sh", "-c", script, "sh", *args]


class RemoteProcess:
    """A command running on the site with streamed stdin and stdout."""

    def __init__(self, channel: paramiko.Channel, command: str) -> None:
        self._chan = channel
        self.command = command

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (blocks while the site's window is full)."""
        self._chan.sendall(data)

    def close_stdin(self) -> None:
        self._chan.shutdown_write()

    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes of stdout; b'' at end of stream."""
        return self._chan.recv(size)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        while True:
            data = self._chan.recv(size)
            if not data:
                return
            yield data

    def _stderr(self) -> str:
        err = bytearray()
        while self._chan.recv_stderr_ready():
            err += self._chan.recv_stderr(65536)
        return err.decode(errors="replace")

    def wait(self, timeout: float = 600.0) -> tuple[int, str]:
        """Wait for the exit status; (code, stderr)."""
        deadline = time.monotonic() + timeout
        while not self._chan.exit_status_ready():
            if time.monotonic() > deadline:
                raise SSHError(f"remote command timed out after {timeout:.0f} s", command=self.command)
            time.sleep(0.01)
        return self._chan.recv_exit_status(), self._stderr()

    def check(self, what: str, timeout: float = 600.0) -> None:
        code, err = self.wait(timeout)
        if code != 0:
            raise RemoteCommandFailed(
                f"{what} failed on the site (exit {code}): {err.strip()[-1000:]}",
                command=self.command,
                exit_code=code,
            )


@contextmanager
def popen(session: SSHSession, argv: Sequence[str]) -> Iterator[RemoteProcess]:
    """Start ``argv`` on the site with streamed stdin/stdout; the channel is closed on exit."""
    command = shlex.join(argv)
    chan = _transport(session).open_session(window_size=_WINDOW, max_packet_size=32768, timeout=30)
    try:
        chan.exec_command(command)
        yield RemoteProcess(chan, command)
    finally:
        chan.close()


def run_checked(session: SSHSession, argv: Sequence[str], what: str, timeout: float = 600.0) -> str:
    """Run a short command; its stdout, or RemoteCommandFailed naming ``what``."""
    result = session.run(list(argv), timeout=timeout)
    if result.exit_code != 0:
        raise RemoteCommandFailed(
            f"{what} failed on the site (exit {result.exit_code}): {result.stderr.strip()[-1000:]}",
            command=result.command,
            exit_code=result.exit_code,
        )
    return result.stdout


# ------------------------------------------------------------------------------------------
# Paths


def check_relative_text(path: str, field: str = "path") -> str:
    """Refuse path text that no transfer should ever carry (NUL, newlines, empty)."""
    if not path or "\0" in path or "\n" in path or "\r" in path:
        raise InvalidTransfer(f"{field} must be a non-empty path without NUL or newline characters", field=field)
    if len(path) > 4096:
        raise InvalidTransfer(f"{field} is longer than 4096 characters", field=field)
    return path


def lexical_join(base: str, path: str, field: str = "path") -> str:
    """``path`` (relative to ``base``, or absolute) normalised, refused if it leaves ``base``."""
    check_relative_text(path, field)
    base = posixpath.normpath(base)
    joined = posixpath.normpath(posixpath.join(base, path))
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        raise PathOutsideWorkDir(
            f"{field} {path!r} resolves to {joined}, outside {base}",
            hint="give a path inside your work directory on the site",
            field=field,
        )
    return joined


def resolve_readable(session: SSHSession, path: str, field: str = "path") -> RemotePath:
    """An absolute source path on the site, resolved: what the login may read is the site's to say."""
    check_relative_text(path, field)
    wanted = posixpath.normpath(path)
    real = run_checked(session, sh('realpath -e -- "$1"', wanted), f"resolving {field}", timeout=60).strip()
    if not posixpath.isabs(real):
        raise StagingError(f"could not resolve {field} {path!r} on the site", field=field)
    return RemotePath("/", real)


@dataclass(frozen=True)
class RemotePath:
    """A path on the site, resolved (symlinks included) and known to lie inside ``base``."""

    base: str
    path: str

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def sibling(self, prefix: str, suffix: str) -> str:
        """A hidden name next to the path (temporary files live in the destination's directory)."""
        return posixpath.join(self.parent, f"{prefix}{self.name}{suffix}")


# Creates the base, then resolves both: realpath -m follows the symlinks of existing components.
_RESOLVE = 'mkdir -p -- "$1" && realpath -e -- "$1" && realpath -m -- "$2"'


def resolve_in(session: SSHSession, base: str, path: str, field: str = "path", allow_base: bool = False) -> RemotePath:
    """Resolve ``path`` on the site and keep it inside ``base`` (a symlink cannot lead out)."""
    if not posixpath.isabs(base):
        raise InvalidTransfer(f"the work directory must be absolute, got {base!r}", field="work_dir")
    wanted = lexical_join(base, path, field)
    out = run_checked(session, sh(_RESOLVE, base, wanted), f"resolving {field}", timeout=60).splitlines()
    if len(out) != 2:
        raise StagingError(f"could not resolve {field} {path!r} on the site", field=field)
    real_base, real = out
    inside = real.startswith(real_base.rstrip("/") + "/") or (allow_base and real == real_base)
    if not inside:
        raise PathOutsideWorkDir(
            f"{field} {path!r} resolves to {real} on the site, outside the work directory {real_base}",
            hint="symbolic links may not lead out of the work directory; choose another path",
            field=field,
        )
    return RemotePath(real_base, real)
