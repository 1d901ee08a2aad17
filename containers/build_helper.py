"""The image build helper: the one privileged step of a build, with a fixed contract.

Entering the builder tree needs root (a private mount namespace and ``pivot_root``), the gateway
does not run as root, so the gateway asks this helper, which runs as root (through ``sudo``, with a
rule for the gateway's user and this command only; like Open OnDemand's ``nginx_stage``)::

    hpcwaas-image-build KEY TIMEOUT  < request  > image.sif  2> log
    hpcwaas-image-build --check                 > {"builder_dir": ..., "version": ...}

The installed command passes the builder folder first (``python -m containers.build_helper
BUILDER_DIR ...``), so a caller cannot choose the tree. The request on stdin is an 8-byte
big-endian length and a tar archive holding ``image.def`` and ``context/`` (regular files and
folders only); the caller then keeps stdin open: end of file before the build ends cancels it (so
a gateway that dies stops its builds). The SIF comes back on stdout, every line of the build on
stderr; the exit code says how it ended (:class:`Exit`). The build itself runs as the tree's
unprivileged build user (``apptainer build --fakeroot``), never as root.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from containers.render import CONTEXT
from hpcwaas.stack.apptainer import BUILD_UID, BUILDS_INSIDE, SidTree

KEY = re.compile(r"^[0-9a-z-]{1,80}$")
MAX_REQUEST = 256 * 1024 * 1024  # a definition and its step files; the registry caps bundles lower
MAX_TIMEOUT = 7 * 24 * 3600


class Exit(enum.IntEnum):
    """How a helper run ended (its exit code)."""

    BUILT = 0
    UNAVAILABLE = 2  # the tree is not prepared, or the request is malformed
    FAILED = 3  # apptainer failed or wrote no image
    TIMEOUT = 4
    CANCELLED = 5


class RequestError(Exception):
    """A malformed request (the message goes to stderr)."""


def pack_request(definition: str, files: dict[str, tuple[bytes, bool]]) -> bytes:
    """The request bytes for ``definition`` and its context files (``rel -> (data, executable)``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in [("image.def", definition.encode(), 0o644),
                                 *((f"{CONTEXT}/{rel}", d, 0o755 if x else 0o644) for rel, (d, x) in files.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    body = buffer.getvalue()
    return len(body).to_bytes(8, "big") + body


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            raise RequestError(f"the request ended after {size - left} of {size} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_request(stream: BinaryIO, work: Path) -> None:
    """Unpack the request into ``work``: ``image.def`` and ``context/`` only, no links, no devices."""
    size = int.from_bytes(_read_exactly(stream, 8), "big")
    if size > MAX_REQUEST:
        raise RequestError(f"the request is {size} bytes; at most {MAX_REQUEST}")
    with tarfile.open(fileobj=io.BytesIO(_read_exactly(stream, size)), mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            inside = member.name == "image.def" or member.name == CONTEXT or member.name.startswith(f"{CONTEXT}/")
            if not inside or not (member.isfile() or member.isdir()) or (member.name == "image.def" and member.isdir()):
                raise RequestError(f"unexpected entry in the request: {member.name!r}")
        if "image.def" not in {m.name for m in members}:
            raise RequestError("the request holds no image.def")
        tar.extractall(work, members=members, filter="data")


def kill_group(pid: int, grace: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Stopper:
    """Stops the build's process group once: on timeout, on end of stdin, or on SIGTERM."""

    def __init__(self) -> None:
        self.reason: Exit | None = None
        self.pid: int | None = None
        self._lock = threading.Lock()

    def stop(self, reason: Exit) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            pid = self.pid
        if pid is not None:
            kill_group(pid)

    def watch_stdin(self, fd: int) -> None:
        # The raw descriptor, not sys.stdin.buffer: a thread blocked on a buffered reader's lock
        # aborts the interpreter at exit.
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        self.stop(Exit.CANCELLED)


def run_build(tree: SidTree, key: str, timeout: float, stdin: BinaryIO, stdout: BinaryIO, log: BinaryIO) -> Exit:
    """One build: request in, SIF out. Removes its folder in the tree whatever happens."""
    inside = f"{BUILDS_INSIDE}/{key}"
    work, cache = tree.host_path(inside), tree.host_path(f"{BUILDS_INSIDE}/.cache")
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
        read_request(stdin, work)
        for folder in (work / "tmp", work / CONTEXT, cache):
            folder.mkdir(parents=True, exist_ok=True)
        for path in [work, cache, *work.rglob("*")]:
            os.chown(path, BUILD_UID, BUILD_UID, follow_symlinks=False)
        stopper = _Stopper()
        threading.Thread(target=stopper.watch_stdin, args=(stdin.fileno(),), daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: stopper.stop(Exit.CANCELLED))
        argv = tree.command(
            ["apptainer", "build", "--fakeroot", "image.sif", "image.def"], cwd=inside,
            env={"APPTAINER_TMPDIR": f"{inside}/tmp", "APPTAINER_CACHEDIR": f"{BUILDS_INSIDE}/.cache"},  # noqa: S108
        )
        code = _run(argv, timeout, stopper, log)
        if stopper.reason is Exit.TIMEOUT:
            log.write(f"# build killed after {timeout:.0f}s\n".encode())
            return Exit.TIMEOUT
        if stopper.reason is Exit.CANCELLED:
            log.write(b"# build cancelled by the caller\n")
            return Exit.CANCELLED
        log.write(f"# build ended with exit code {code}\n".encode())
        if code != 0:
            return Exit.FAILED
        sif = work / "image.sif"
        if not sif.is_file():
            log.write(b"FATAL: apptainer reported success but wrote no image.sif\n")
            return Exit.FAILED
        with sif.open("rb") as image:
            shutil.copyfileobj(image, stdout, 1 << 20)
        stdout.flush()
        return Exit.BUILT
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], timeout: float, stopper: _Stopper, log: BinaryIO) -> int:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={"PATH": os.defpath + ":/usr/sbin:/sbin"})
    stopper.pid = proc.pid
    if stopper.reason is not None:  # cancelled while starting
        kill_group(proc.pid)
    timer = threading.Timer(timeout, stopper.stop, args=(Exit.TIMEOUT,))
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
        return proc.wait()
    finally:
        timer.cancel()


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _check(tree: SidTree, builder_dir: Path) -> int:
    if not tree.ready():
        _say(f"the Apptainer builder is not prepared at {builder_dir}")
        return Exit.UNAVAILABLE
    sys.stdout.write(json.dumps({"builder_dir": str(builder_dir), "version": tree.version()}) + "\n")
    return Exit.BUILT


def _trusted(builder_dir: Path) -> bool:
    """Root enters only a tree that no one else could have changed."""
    for path in (builder_dir, builder_dir / "sid"):
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            if info.st_uid != 0 or info.st_mode & 0o022 or not path.is_dir() or path.is_symlink():
                return False
    return True


def main(argv: list[str]) -> int:
    """``BUILDER_DIR --check`` or ``BUILDER_DIR KEY TIMEOUT`` (see the module's docstring)."""
    if len(argv) not in (2, 3) or not Path(argv[0]).is_absolute():
        _say("usage: hpcwaas-image-build KEY TIMEOUT | --check")
        return Exit.UNAVAILABLE
    builder_dir = Path(argv[0])
    tree = SidTree(builder_dir / "sid")
    if os.geteuid() == 0 and not _trusted(builder_dir):
        _say(f"{builder_dir} must be owned by root and writable by root only")
        return Exit.UNAVAILABLE
    if argv[1:] == ["--check"]:
        return _check(tree, builder_dir)
    key, timeout = argv[1], argv[2] if len(argv) == 3 else ""
    if not KEY.match(key) or not timeout.isdigit() or not 1 <= int(timeout) <= MAX_TIMEOUT:
        _say(f"bad arguments: KEY must match {KEY.pattern}, TIMEOUT be 1..{MAX_TIMEOUT} seconds")
        return Exit.UNAVAILABLE
    if not tree.ready():
        _say(f"the Apptainer builder is not prepared at {builder_dir}")
        return Exit.UNAVAILABLE
    try:
        return run_build(tree, key, float(timeout), sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    except (RequestError, tarfile.TarError) as exc:
        _say(f"bad request: {exc}")
        return Exit.UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
