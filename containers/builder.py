"""Real Apptainer builds in the stack's builder tree (``hpcwaas/stack/apptainer.py``).

Each build gets a folder ``/build/<key>`` inside the sid tree, owned by the build user, holding
``image.def`` and the step files under ``context/``; ``apptainer build --fakeroot`` runs there as
that user (``Bootstrap: debootstrap`` from the Debian mirror). Output is streamed line by line to
the build's log file through :func:`redact`, with an environment that holds nothing of the
caller's. A build that outlives its timeout is killed with its whole process group.

Pitfalls: entering the tree needs root (a private mount namespace and ``pivot_root``); a builder
that is missing, half prepared or entered by a non-root process reports *why* through
:meth:`Builder.status` instead of failing later.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from containers.errors import BuilderUnavailable, BuildFailed, SpecError
from containers.render import CONTEXT, RENDER_VERSION
from containers.store import StepFile
from hpcwaas.stack.apptainer import BUILD_UID, BUILDS_INSIDE, SidTree

HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el"}.get(platform.machine(), platform.machine())

# Secrets that must never reach a log, whatever a build prints (tokens, keys, passwords, URLs
# with credentials). Applied line by line; a private key block is cut as a whole.
_REDACTIONS = [
    (re.compile(r"hpcw_[A-Za-z0-9_-]{8,}"), "hpcw_[REDACTED]"),
    (re.compile(r"\b(hv[sbr]|s)\.[A-Za-z0-9_-]{20,}"), r"\1.[REDACTED]"),
    (re.compile(r"(?i)\b(password|passwd|pass|token|secret|api[_-]?key)(\s*[=:]\s*)\S+"), r"\1\2[REDACTED]"),
    (re.compile(r"(?i)(authorization:\s*\w+\s+)\S+"), r"\1[REDACTED]"),
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:[REDACTED]@"),
]
_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
# Lines that say why a build failed (apt, debootstrap, apptainer, pip, the shell).
_ERROR_LINE = re.compile(r"^(E: |FATAL|ERROR|Error|error:|W: Failed|.*: not found$|.*No matching distribution)")


class Redactor:
    """Redacts secrets from a stream of lines (keeps state across a private key block)."""

    def __init__(self) -> None:
        self._in_key = False

    def __call__(self, line: str) -> str:
        if self._in_key:
            if _KEY_END.search(line):
                self._in_key = False
            return "[REDACTED PRIVATE KEY]\n" if not self._in_key else ""
        if _KEY_BEGIN.search(line):
            self._in_key = not _KEY_END.search(line)
            return "[REDACTED PRIVATE KEY]\n" if not self._in_key else ""
        for pattern, replacement in _REDACTIONS:
            line = pattern.sub(replacement, line)
        return line


def redact(text: str) -> str:
    """``text`` with secrets replaced."""
    redactor = Redactor()
    return "".join(redactor(line) for line in text.splitlines(keepends=True))


@dataclass(frozen=True)
class BuilderStatus:
    """Whether builds can run here, and if not, why and what to do."""

    available: bool
    version: str | None
    reason: str | None = None
    hint: str | None = None

    def public(self) -> dict[str, object]:
        return {"available": self.available, "version": self.version, "reason": self.reason, "hint": self.hint,
                "arch": HOST_ARCH}


class Builder:
    """Runs ``apptainer build --fakeroot`` in the builder tree under ``builder_dir``."""

    def __init__(self, builder_dir: Path, *, mirror: str = "http://deb.debian.org/debian",
                 timeout: float = 3600.0) -> None:
        self.builder_dir = builder_dir
        self.tree = SidTree(builder_dir / "sid")
        self.mirror = mirror
        self.timeout = timeout

    def status(self) -> BuilderStatus:
        """Available, or the reason it is not (never blocks)."""
        hint = "run `python -m hpcwaas.stack up --only apptainer` as root (prepares it once, then reuses it)"
        if not self.tree.ready():
            return BuilderStatus(False, None, f"the Apptainer builder is not prepared at {self.builder_dir}", hint)
        try:
            version = self.version()
        except (OSError, ValueError, KeyError) as exc:
            return BuilderStatus(False, None, f"the builder's ready.json is unreadable: {exc}", hint)
        if os.geteuid() != 0:
            return BuilderStatus(False, version, "builds need root to enter the builder tree (pivot_root)",
                                 "run the gateway (or the build) as root")
        if shutil.which("unshare") is None:
            return BuilderStatus(False, version, "`unshare` (util-linux) is missing on this host",
                                 "apt-get install util-linux")
        return BuilderStatus(True, version)

    def version(self) -> str:
        """What the image id includes besides the inputs: Apptainer's and the renderer's versions."""
        return f"{self.tree.version()}; hpcwaas-render {RENDER_VERSION}; {HOST_ARCH}"

    def require(self) -> BuilderStatus:
        status = self.status()
        if not status.available:
            raise BuilderUnavailable(status.reason or "the builder is not available", hint=status.hint)
        return status

    def build(
        self,
        definition: str,
        files: dict[str, StepFile],
        *,
        key: str,
        log_file: Path,
        arch: str = HOST_ARCH,
        on_process: Callable[[int], None] | None = None,
    ) -> Path:
        """Build and return the SIF's path on the host (the caller moves it into the store).

        ``key`` names the build folder (``[0-9a-z-]``); the log gets every output line, redacted.
        Raises :class:`BuildFailed` with the tool's error lines, or :class:`BuilderUnavailable`.
        """
        self.require()
        if arch != HOST_ARCH:
            raise SpecError(f"target.arch: {arch} images cannot be built on this {HOST_ARCH} builder",
                            problems=[{"field": "target.arch", "message": f"builder is {HOST_ARCH}"}])
        if not re.match(r"^[0-9a-z-]{1,80}$", key):
            raise ValueError(f"bad build key {key!r}")
        inside = f"{BUILDS_INSIDE}/{key}"
        work = self.tree.host_path(inside)
        cache = self.tree.host_path(f"{BUILDS_INSIDE}/.cache")
        self._remove(work)
        for folder in (work, work / "tmp", work / CONTEXT, cache):
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, BUILD_UID, BUILD_UID)
        (work / "image.def").write_text(definition)
        for rel, step_file in files.items():
            target = work / CONTEXT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(step_file.data)
            target.chmod(0o755 if step_file.executable else 0o644)
        for path in [work, *work.rglob("*")]:
            os.chown(path, BUILD_UID, BUILD_UID, follow_symlinks=False)
        argv = self.tree.command(
            ["apptainer", "build", "--fakeroot", "image.sif", "image.def"], cwd=inside,
            env={"APPTAINER_TMPDIR": f"{inside}/tmp", "APPTAINER_CACHEDIR": f"{BUILDS_INSIDE}/.cache"},  # noqa: S108
        )
        log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            code, errors = self._run(argv, log_file, on_process)
            if code != 0:
                detail = "\n".join(errors[-12:]) or f"apptainer exited {code}"
                raise BuildFailed(f"the image build failed:\n{detail}", reason=detail, exit_code=code)
            sif = work / "image.sif"
            if not sif.exists():
                raise BuildFailed("apptainer reported success but wrote no image.sif")
            out = work.with_name(f"{key}.sif")
            sif.rename(out)
            return out
        finally:
            self._remove(work)

    def _run(self, argv: list[str], log_file: Path, on_process: Callable[[int], None] | None) -> tuple[int, list[str]]:
        """Run, streaming redacted lines to the log; kill the process group on timeout."""
        errors: list[str] = []
        redactor = Redactor()
        with log_file.open("a", buffering=1, errors="replace") as log:
            log.write(f"# build started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={"PATH": os.defpath + ":/usr/sbin:/sbin"})
            if on_process is not None:
                on_process(proc.pid)
            timed_out = threading.Event()

            def kill_on_timeout() -> None:
                if proc.poll() is None:
                    timed_out.set()
                    kill_group(proc.pid)

            timer = threading.Timer(self.timeout, kill_on_timeout)
            timer.daemon = True
            timer.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    line = redactor(raw.decode(errors="replace"))
                    log.write(line)
                    if _ERROR_LINE.match(line.strip()):
                        errors.append(line.rstrip())
                code = proc.wait()
            finally:
                timer.cancel()
            if timed_out.is_set():
                log.write(f"# build killed after {self.timeout:.0f}s\n")
                raise BuildFailed(f"the image build did not finish within {self.timeout:.0f}s and was stopped",
                                  reason="timeout")
            log.write(f"# build ended with exit code {code}\n")
        return code, errors

    def _remove(self, path: Path) -> None:
        # The tree is not mounted on the host side, so this never reaches beyond the folder.
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def kill_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM a build's process group, then SIGKILL what is left."""
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
