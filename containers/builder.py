"""Real Apptainer builds in the stack's builder tree, through the build helper.

Entering the tree needs root (a private mount namespace and ``pivot_root``) and the gateway does
not run as root, so every build goes through ``containers/build_helper.py``: the request (the
definition and the step files) goes in on its stdin, the SIF comes back on its stdout, and every
line of the build is redacted (:func:`redact`) into the build's log. The helper runs the build as
the tree's unprivileged build user (``apptainer build --fakeroot``, ``Bootstrap: debootstrap`` from
the Debian mirror) and stops it at the timeout with its whole process group.

Pitfalls: a builder that is missing, half prepared, or whose helper the gateway's user may not run
reports *why* through :meth:`Builder.status` instead of failing later.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from containers.build_helper import KEY, Exit, kill_group, pack_request
from containers.errors import BuilderUnavailable, BuildFailed, SpecError
from containers.render import RENDER_VERSION
from containers.store import StepFile
from hpcwaas.stack.apptainer import IMAGE_BUILD_HELPER, SidTree
from hpcwaas.stack.site_users import GATEWAY_USER

__all__ = ["HOST_ARCH", "Builder", "BuilderStatus", "kill_group", "redact"]

HELPER_CHECK_SECONDS = 30.0  # how long a helper's answer to --check is trusted
HELPER_GRACE_SECONDS = 120.0  # past the timeout, the helper is cancelled if it has not stopped itself
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
    """Builds images through the build helper (``containers/build_helper.py``).

    As root the helper runs directly; otherwise through ``sudo -n`` and the installed
    :data:`IMAGE_BUILD_HELPER`, which is the only thing the gateway's user may run as root.
    """

    def __init__(self, builder_dir: Path, *, mirror: str = "http://deb.debian.org/debian",
                 timeout: float = 3600.0, helper: Path = IMAGE_BUILD_HELPER) -> None:
        self.builder_dir = builder_dir
        self.tree = SidTree(builder_dir / "sid")
        self.mirror = mirror
        self.timeout = timeout
        self.helper = helper
        self._checked: tuple[float, BuilderStatus] | None = None

    def status(self) -> BuilderStatus:
        """Available, or the reason it is not (answers within seconds)."""
        if os.geteuid() != 0:
            return self._helper_status()
        hint = "run `python -m hpcwaas.stack up --only apptainer` as root (prepares it once, then reuses it)"
        if not self.tree.ready():
            return BuilderStatus(False, None, f"the Apptainer builder is not prepared at {self.builder_dir}", hint)
        try:
            version = self._describe(self.tree.version())
        except (OSError, ValueError, KeyError) as exc:
            return BuilderStatus(False, None, f"the builder's ready.json is unreadable: {exc}", hint)
        if shutil.which("unshare") is None:
            return BuilderStatus(False, version, "`unshare` (util-linux) is missing on this host",
                                 "apt-get install util-linux")
        return BuilderStatus(True, version)

    def _helper_status(self) -> BuilderStatus:
        """Ask the installed helper (``--check``); remembered for a while, it costs a sudo call."""
        if self._checked is not None and time.monotonic() - self._checked[0] < HELPER_CHECK_SECONDS:
            return self._checked[1]
        status = self._ask_helper()
        self._checked = (time.monotonic(), status)
        return status

    def _ask_helper(self) -> BuilderStatus:
        user = pwd.getpwuid(os.geteuid()).pw_name
        rule = f"`{user} ALL=(root) NOPASSWD: {self.helper}` in /etc/sudoers.d/ (docs/security.md)"
        install = "as root: `python -m hpcwaas.stack up --only apptainer` installs it, and the sudo rule for " \
                  f"the user {GATEWAY_USER}"
        if not self.helper.is_file():
            return BuilderStatus(False, None, f"the image build helper {self.helper} is not installed", install)
        if shutil.which("sudo") is None:
            return BuilderStatus(False, None, "builds run through sudo, which is not installed",
                                 "apt-get install sudo, then " + install)
        try:
            out = subprocess.run([*self._helper_argv(), "--check"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL, check=False, env={"PATH": os.defpath})
        except subprocess.TimeoutExpired:
            return BuilderStatus(False, None, "the image build helper did not answer within 30 s", install)
        said = out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        if out.returncode != 0 and "sudo:" in said[0]:
            return BuilderStatus(False, None, f"the user {user} may not run {self.helper}: {said[0]}", f"add {rule}")
        if out.returncode != 0:
            return BuilderStatus(False, None, f"the image build helper says: {said[0]}", install)
        found = json.loads(out.stdout)
        if Path(found["builder_dir"]) != self.builder_dir:
            return BuilderStatus(False, None, f"the image build helper builds in {found['builder_dir']}, not in "
                                 f"{self.builder_dir}", f"set HPCWAAS_BUILDER_DIR={found['builder_dir']}")
        return BuilderStatus(True, self._describe(str(found["version"])))

    def _helper_argv(self) -> list[str]:
        if os.geteuid() == 0:
            return [sys.executable, "-I", "-m", "containers.build_helper", str(self.builder_dir)]
        return ["sudo", "-n", str(self.helper)]

    @staticmethod
    def _describe(apptainer_version: str) -> str:
        return f"{apptainer_version}; hpcwaas-render {RENDER_VERSION}; {HOST_ARCH}"

    def version(self) -> str:
        """What the image id includes besides the inputs: Apptainer's and the renderer's versions."""
        status = self.status()
        if status.version is None:
            raise BuilderUnavailable(status.reason or "the builder is not available", hint=status.hint)
        return status.version

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
        """Build and return the SIF's path, next to the log (the caller moves it into the store).

        ``key`` names the build folder (``[0-9a-z-]``); the log gets every output line, redacted.
        Raises :class:`BuildFailed` with the tool's error lines, or :class:`BuilderUnavailable`.
        """
        self.require()
        if arch != HOST_ARCH:
            raise SpecError(f"target.arch: {arch} images cannot be built on this {HOST_ARCH} builder",
                            problems=[{"field": "target.arch", "message": f"builder is {HOST_ARCH}"}])
        if not KEY.match(key):
            raise ValueError(f"bad build key {key!r}")
        request = pack_request(definition, {rel: (f.data, f.executable) for rel, f in files.items()})
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = log_file.parent / f".{key}.sif"
        argv = [*self._helper_argv(), key, str(max(1, math.ceil(self.timeout)))]
        try:
            code, errors, said = self._run(argv, request, out, log_file, on_process)
            self._raise_for(code, errors, said)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return out

    def _raise_for(self, code: int, errors: list[str], said: list[str]) -> None:
        """The helper's exit code as the build's outcome."""
        if code == Exit.BUILT:
            return
        if code == Exit.FAILED:
            detail = "\n".join(errors[-12:]) or "apptainer failed"
            raise BuildFailed(f"the image build failed:\n{detail}", reason=detail, exit_code=code)
        if code == Exit.TIMEOUT:
            raise BuildFailed(f"the image build did not finish within {self.timeout:.0f}s and was stopped",
                              reason="timeout")
        if code == Exit.CANCELLED:
            raise BuildFailed("the image build was cancelled", reason="cancelled")
        last = said[-1] if said else f"exit {code}"
        raise BuilderUnavailable(f"the image build helper refused the build: {last}",
                                 hint="see `waas images builder` for what the builder needs")

    def _run(self, argv: list[str], request: bytes, out: Path, log_file: Path,
             on_process: Callable[[int], None] | None) -> tuple[int, list[str], list[str]]:
        """Run the helper: the request in, the SIF to ``out``, redacted lines to the log."""
        errors: list[str] = []
        said: list[str] = []  # the last few lines, for a refusal's reason
        redactor = Redactor()
        with log_file.open("a", buffering=1, errors="replace") as log, out.open("wb") as sif:
            log.write(f"# build started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=sif, stderr=subprocess.PIPE,
                                    start_new_session=True, env={"PATH": os.defpath + ":/usr/sbin:/sbin"})
            assert proc.stdin is not None and proc.stderr is not None
            if on_process is not None:
                on_process(proc.pid)
            with contextlib.suppress(BrokenPipeError):  # refused early: its stderr says why
                proc.stdin.write(request)
                proc.stdin.flush()
            # The helper stops the build at the timeout; closing stdin is the backstop (it cancels).
            guard = threading.Timer(self.timeout + HELPER_GRACE_SECONDS, proc.stdin.close)
            guard.daemon = True
            guard.start()
            try:
                for raw in proc.stderr:
                    line = redactor(raw.decode(errors="replace"))
                    log.write(line)
                    said = [*said[-4:], line.strip()]
                    if _ERROR_LINE.match(line.strip()):
                        errors.append(line.rstrip())
                code = proc.wait()
            finally:
                guard.cancel()
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        return code, errors, said
