"""Process plumbing for the local stack: pid files, identity checks, start, stop, secret files."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcwaas.errors import HpcwaasError

INSTALL_HINT = "run `bash scripts/install-system.sh` as root, then `python -m hpcwaas.stack up` again"


class StackError(HpcwaasError):
    """A local-stack service could not be installed, started, stopped or configured."""

    code = "stack_error"


# --------------------------------------------------------------------------------------------
# Files


def ensure_dir(path: Path, mode: int = 0o755, owner: str | None = None) -> Path:
    """Create ``path`` (and parents) and force its mode and, optionally, its owner."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        import pwd

        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` atomically with ``mode`` set before any byte lands (no readable window)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits from `mode`
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_secret(path: Path, text: str) -> None:
    """Write a secret: mode 0600, owner root (the stack runs as root)."""
    write_file(path, text, 0o600)


def read_secret(path: Path) -> str:
    """Read a secret file, stripped."""
    return path.read_text().strip()


def new_password(nbytes: int = 24) -> str:
    """A random password safe to put in config files unquoted (URL-safe alphabet)."""
    return secrets.token_urlsafe(nbytes)


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(content[-lines:])


# --------------------------------------------------------------------------------------------
# Processes


def read_pid(pid_file: Path) -> int | None:
    """The pid in a pid file (first line, as postgres writes several), or None."""
    try:
        first = pid_file.read_text().split("\n", 1)[0].strip()
        return int(first) if first else None
    except (OSError, ValueError):
        return None


def process_exe(pid: int) -> str | None:
    """Basename of the executable of a live, non-zombie process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The state letter follows the parenthesised command name, which may contain spaces.
        if stat[stat.rindex(")") + 2] in "ZX":
            return None
        exe = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError, IndexError):
        return None
    return os.path.basename(exe.removesuffix(" (deleted)"))


def process_cmdline(pid: int) -> str:
    """The command line of a process as one string ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def reap(pid: int) -> None:
    """Collect a child we started ourselves, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true, or raise StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: S110 - a check that raises only means "not yet"
            pass
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    user: str | None = None,
    timeout: float = 60,
    check: bool = True,
    what: str | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command, optionally as another user; secrets go through ``input``, never argv."""
    argv = [str(a) for a in args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    full_env = None if env is None else {**_base_env(), **env}
    try:
        proc = subprocess.run(
            argv, input=input, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise StackError(f"{argv[0]} is not installed", hint=hint or INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what or argv[0]} did not finish within {timeout:.0f}s", hint=hint) from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise StackError(f"{what or argv[0]} failed (exit {proc.returncode}): {detail}", hint=hint)
    return proc


def _base_env() -> dict[str, str]:
    """A small, predictable environment for the daemons (they must not inherit a random shell)."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }


@dataclass
class Daemon:
    """One long-running process of the stack, identified by a pid file and its executable.

    ``exe`` is the executable's basename; a pid file pointing at a process with another
    executable (pid reuse) or at no process at all is *stale*. ``marker``, when set, must also
    appear in the command line, so that our sshd is never confused with the system one.
    """

    name: str
    exe: str
    pid_file: Path
    log_file: Path
    marker: str | None = None
    # Where it answers: a TCP port on ``host`` and/or a unix socket (shown by ``status``).
    port: int | None = None
    host: str = "127.0.0.1"
    socket: Path | None = None
    # SIGTERM is a clean stop for most daemons; postgres gets SIGINT (fast shutdown), because
    # SIGTERM there waits for every client to disconnect.
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 15.0
    stop_children: bool = False

    def exe_names(self) -> set[str]:
        """Accepted executable basenames: Debian installs some daemons through alternatives
        (``slurmctld`` -> ``slurmctld-wlm``), and /proc shows the resolved file."""
        names = {self.exe}
        found = shutil.which(self.exe, path=_base_env()["PATH"])
        if found:
            names.add(os.path.basename(os.path.realpath(found)))
        return names

    def pid(self) -> int | None:
        """The pid of the live process, or None (no pid file, or a stale one)."""
        pid = read_pid(self.pid_file)
        if pid is None or process_exe(pid) not in self.exe_names():
            return None
        if self.marker is not None and self.marker not in process_cmdline(pid):
            return None
        return pid

    @property
    def address(self) -> str:
        """Where the daemon answers, for people."""
        parts = []
        if self.port is not None:
            parts.append(f"{self.host}:{self.port}")
        if self.socket is not None:
            parts.append(str(self.socket))
        return " ".join(parts) or "-"

    def answers(self) -> bool:
        """Whether its port accepts connections (or its socket exists, when it has no port)."""
        if self.port is not None:
            return port_open(self.host, self.port)
        if self.socket is not None:
            return self.socket.exists()
        return True

    def state(self) -> str:
        """'running', 'unhealthy' (alive, not answering), 'stale' (pid file left) or 'stopped'."""
        if self.pid() is not None:
            return "running" if self.answers() else "unhealthy"
        return "stale" if self.pid_file.exists() else "stopped"

    def clear_stale(self) -> None:
        """Remove a pid file that no longer designates our process."""
        if self.pid() is None:
            self.pid_file.unlink(missing_ok=True)

    def spawn(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        foreground: bool = True,
    ) -> None:
        """Start the daemon, output appended to its log.

        ``foreground=True``: the process stays in the foreground; we detach it in its own session
        and write the pid file. ``foreground=False``: the program daemonizes and writes its own
        pid file; we wait for the launcher to return.
        """
        self.clear_stale()
        if self.port is not None and port_open(self.host, self.port):
            raise StackError(
                f"{self.host}:{self.port} is already in use by another program, so {self.name} cannot start",
                hint=f"find it with `ss -ltnp 'sport = :{self.port}'` and stop it",
            )
        argv = [str(a) for a in args]
        full_env = {**_base_env(), **(env or {})}
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise StackError(f"{argv[0]} is not installed", hint=INSTALL_HINT) from exc
        finally:
            os.close(fd)
        if foreground:
            write_file(self.pid_file, f"{proc.pid}\n")
            return
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{self.name} did not daemonize within 30s; log: {self.log_file}") from exc
        if code != 0:
            raise StackError(
                f"{self.name} exited with {code} at start. Last log lines:\n{tail(self.log_file)}",
                hint=f"see {self.log_file}",
            )

    def wait_running(self, timeout: float = 20.0) -> int:
        """Wait until the pid file designates a live process of ours; return its pid."""
        try:
            wait_until(lambda: self.pid() is not None, timeout, f"{self.name} to start")
        except StackError as exc:
            raise StackError(
                f"{self.name} did not start. Last log lines:\n{tail(self.log_file)}",
                hint=f"see {self.log_file}",
            ) from exc
        pid = self.pid()
        assert pid is not None
        return pid

    def stop(self) -> bool:
        """Stop by pid: the stop signal, a wait, SIGKILL as a last resort. True if it was running.

        With ``stop_children``, processes forked by the daemon (sshd sessions) are stopped too.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        children = descendants(pid) if self.stop_children else []
        terminate(pid, self.stop_signal, self.stop_timeout, self.name)
        for child in children:
            terminate(child, signal.SIGTERM, 5, f"{self.name} child {child}")
        # Daemons remove their own pid file on a clean exit, but not after SIGKILL.
        self.pid_file.unlink(missing_ok=True)
        return True


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree, deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def terminate(pid: int, sig: int, timeout: float, what: str) -> None:
    """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; returns once the process is gone."""

    def gone() -> bool:
        reap(pid)
        return process_exe(pid) is None

    if gone():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(gone, 5, f"{what} to die")
