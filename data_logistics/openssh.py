"""A bulk data path through the OpenSSH client, with the key held by a private ssh-agent.

paramiko moves ~25-55 MB/s on this machine class; OpenSSH's ``ssh`` moves what ``scp`` moves. For
bulk streams the engine therefore pipes into a local ``ssh`` process, while every short command
(resolution, checks, hashing, renames) keeps using the paramiko session.

The key never touches the disk or a command line: a private ``ssh-agent`` (its socket in a fresh
0700 directory) receives it from ``ssh-add -`` on stdin, and ``ssh`` asks that agent. The host key
is the site's pinned one, written to a known_hosts file in the same directory, with
``StrictHostKeyChecking=yes``: no trust on first use. Everything is removed on close.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from data_logistics.errors import StagingError
from hpcwaas.ssh import SiteEndpoint, SSHCredential, parse_public_key

# Cipher preference for the bulk streams: AES-GCM first (AES-NI makes it ~1.5-2x faster than
# OpenSSH's default first choice, chacha20-poly1305, on x86 login nodes), then OpenSSH's own defaults,
# so a server that negotiates with a default client negotiates with this list too.
# HPCWAAS_PIPELINES_SSH_CIPHERS overrides it (an OpenSSH ``-c`` list).
DEFAULT_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                   "aes128-ctr,aes192-ctr,aes256-ctr")


def ciphers() -> str:
    value = os.environ.get("HPCWAAS_PIPELINES_SSH_CIPHERS", "").strip() or DEFAULT_CIPHERS
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-@.")
    if not all(c and c[0].isalnum() and set(c) <= allowed for c in value.split(",")):
        raise StagingError("HPCWAAS_PIPELINES_SSH_CIPHERS must be a comma-separated list of cipher names")
    return value


def grow_pipe(fd: int, size: int = 1024 * 1024) -> None:
    """Enlarge a pipe's buffer (64 KiB by default on Linux): fewer wake-ups per MiB streamed."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size, or not Linux
        fcntl.fcntl(fd, setpipe, size)


def available() -> bool:
    """Whether the OpenSSH client and agent are installed."""
    return all(shutil.which(x) for x in ("ssh", "ssh-agent", "ssh-add"))


class OpenSSHLink:
    """``ssh`` processes to one site as one login, authenticated through a private agent."""

    def __init__(self, endpoint: SiteEndpoint, login: str, private_key: str | SSHCredential) -> None:
        credential = private_key if isinstance(private_key, SSHCredential) else SSHCredential(private_key)
        self.endpoint = endpoint
        self.login = login
        self._dir = Path(tempfile.mkdtemp(prefix="hpcwaas-ssh-"))
        os.chmod(self._dir, 0o700)
        self._sock = self._dir / "agent.sock"
        pinned = parse_public_key(endpoint.host_key)
        name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
        (self._dir / "known_hosts").write_text(f"{name} {pinned.line}\n")
        # A certificate is public: ssh reads it from a file, the key stays in the agent.
        self._certificate = self._dir / "key-cert.pub" if credential.certificate else None
        if self._certificate is not None:
            self._certificate.write_text(f"{credential.certificate}\n")
        self._agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(self._sock)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            # The socket file appears at bind(), before the agent listens: wait for a connection,
            # not the file (ssh-add in between got "Connection refused").
            while not self._agent_listening():
                if time.monotonic() > deadline or self._agent.poll() is not None:
                    raise StagingError("ssh-agent did not start")
                time.sleep(0.01)
            added = subprocess.run(["ssh-add", "-q", "-"], input=credential.private_key.encode(), env=self._env(),
                                   capture_output=True, timeout=30)
            if added.returncode != 0:
                raise StagingError(f"ssh-add refused the key: {added.stderr.decode(errors='replace')[-300:]}")
        except BaseException:
            self.close()
            raise

    def _agent_listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self._sock))
            except OSError:
                return False
        return True

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": str(self._sock)}

    def argv(self, remote_argv: Sequence[str]) -> list[str]:
        """The local command line running ``remote_argv`` on the site (quoted with shlex.join)."""
        return [
            "ssh", "-p", str(self.endpoint.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self._dir / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"IdentityAgent={self._sock}", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            *(["-o", f"CertificateFile={self._certificate}"] if self._certificate is not None else []),
            "-c", ciphers(), "-F", "/dev/null", "-l", self.login, self.endpoint.host, "--", shlex.join(remote_argv),
        ]

    def popen(self, remote_argv: Sequence[str], stdin: int | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``remote_argv`` on the site; its stdin and stdout are pipes, or open file descriptors
        (``stdin``: e.g. a local file the ``ssh`` process then reads itself; ``stdout``: a local file it
        writes itself; no copy of the bytes through Python)."""
        proc = subprocess.Popen(self.argv(remote_argv), stdin=subprocess.PIPE if stdin is None else stdin,
                                stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE,
                                env=self._env())
        if proc.stdin is not None:
            grow_pipe(proc.stdin.fileno())
        return proc

    def close(self) -> None:
        if self._agent.poll() is None:
            self._agent.terminate()
            try:
                self._agent.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._agent.kill()
                self._agent.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> OpenSSHLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
