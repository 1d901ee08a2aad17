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

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from data_logistics.errors import StagingError
from hpcwaas.ssh import SiteEndpoint, parse_public_key


def available() -> bool:
    """Whether the OpenSSH client and agent are installed."""
    return all(shutil.which(x) for x in ("ssh", "ssh-agent", "ssh-add"))


class OpenSSHLink:
    """``ssh`` processes to one site as one login, authenticated through a private agent."""

    def __init__(self, endpoint: SiteEndpoint, login: str, private_key: str) -> None:
        self.endpoint = endpoint
        self.login = login
        self._dir = Path(tempfile.mkdtemp(prefix="hpcwaas-ssh-"))
        os.chmod(self._dir, 0o700)
        self._sock = self._dir / "agent.sock"
        pinned = parse_public_key(endpoint.host_key)
        name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
        (self._dir / "known_hosts").write_text(f"{name} {pinned.line}\n")
        self._agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(self._sock)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 10
            while not self._sock.exists():
                if time.monotonic() > deadline or self._agent.poll() is not None:
                    raise StagingError("ssh-agent did not start")
                time.sleep(0.01)
            added = subprocess.run(["ssh-add", "-q", "-"], input=private_key.encode(), env=self._env(),
                                   capture_output=True, timeout=30)
            if added.returncode != 0:
                raise StagingError(f"ssh-add refused the key: {added.stderr.decode(errors='replace')[-300:]}")
        except BaseException:
            self.close()
            raise

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": str(self._sock)}

    def argv(self, remote_argv: Sequence[str]) -> list[str]:
        """The local command line running ``remote_argv`` on the site (quoted with shlex.join)."""
        return [
            "ssh", "-p", str(self.endpoint.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self._dir / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"IdentityAgent={self._sock}", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "-F", "/dev/null", "-l", self.login, self.endpoint.host, "--", shlex.join(remote_argv),
        ]

    def popen(self, remote_argv: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(remote_argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self._env())

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
