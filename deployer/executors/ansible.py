"""Run an operation as an Ansible playbook: ansible-runner in a sandbox, events read back.

A workflow's playbook is untrusted code, and Ansible evaluates lookups, filters, plugins,
``delegate_to: localhost`` and the local connection on the controller. So the ``ansible-runner``
command runs inside :mod:`deployer.sandbox` (bubblewrap, an unprivileged uid of its own, a private
run folder holding its own copy of the bundle, the profile read-only, nothing of the gateway's):
whatever the topology says, a developer's operation never executes as the gateway's user.

The host is ``localhost`` over the local connection (inside the sandbox), or a site's login host
over SSH, the host key pinned in the run's ``known_hosts`` with ``StrictHostKeyChecking=yes``.
The one key it needs comes from the run's :class:`deployer.credentials.CredentialResolver` (owner
checked) and reaches a private ``ssh-agent`` started inside the sandbox through standard input:
never a file, an argument or an environment variable. ``set_stats`` data become the node's
attributes and the operation's outputs. ``sandbox=False`` (the standalone deployer's
``--no-sandbox``, for an operator's own templates) runs the same command without the boundary.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deployer import sandbox as sandboxes
from deployer.errors import OperationError
from deployer.executors import HostSpec, OperationRequest, OperationResult, RunHooks
from hpcwaas.errors import HpcwaasError
from hpcwaas.ssh import SSHCredential
from tosca import TOSCA_DIR

_RUNNER = str(Path(sys.executable).parent / "ansible-runner")
# Inside the run, as its uid: start ansible-runner, relay its job events (files only the run's
# uid may read) to stdout as JSON lines in order, then one line with the run's status and the
# tail of its output, and exit with the runner's exit code. argv: the private data dir, the playbook.
_RELAY = r"""
import glob, json, os, subprocess, sys, time
private, playbook = sys.argv[1:3]
runner = subprocess.Popen([os.environ["HPCWAAS_RUNNER"], "run", "-q", "--ident", "run", "-p", playbook, private],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
folder = os.path.join(private, "artifacts", "run")
counter = 1
def relay():
    global counter
    while found := glob.glob(os.path.join(folder, "job_events", f"{counter}-*.json")):
        try:
            with open(found[0]) as fh:
                event = json.load(fh)
        except (OSError, ValueError):
            return  # still being written
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
        counter += 1
def read(name):
    try:
        with open(os.path.join(folder, name), errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""
while runner.poll() is None:
    relay()
    time.sleep(0.2)
relay()
end = {"hpcwaas_end": True, "status": read("status").strip(), "stdout": read("stdout")[-1500:]}
sys.stdout.write(json.dumps(end) + "\n")
sys.exit(runner.returncode)
"""
# Start the run's own agent, load the key from stdin, then the relay ($0: the private data dir,
# $1: the playbook). The agent dies with the sandbox's PID namespace.
_WITH_AGENT = ('ssh-agent -a "$SSH_AUTH_SOCK" >/dev/null && ssh-add -q - 2>/dev/null '
               '&& exec "$HPCWAAS_PYTHON" -c "$HPCWAAS_RELAY" "$0" "$1"')
_WITHOUT_AGENT = 'exec "$HPCWAAS_PYTHON" -c "$HPCWAAS_RELAY" "$0" "$1"'
_GRACE = 30.0  # beyond the operation's own timeout, for ansible-runner to wind down


def _known_hosts_line(host: HostSpec) -> str:
    assert host.endpoint is not None
    name = host.endpoint.host if host.endpoint.port == 22 else f"[{host.endpoint.host}]:{host.endpoint.port}"
    return f"{name} {host.endpoint.host_key.strip()}\n"


def _copy_if_present(source: str, target: str) -> None:
    """Copy one file of a bundle; one that vanished meanwhile is skipped (a standalone deployer's
    template folder may also hold its state folder, written while the copy runs)."""
    try:
        shutil.copy2(source, target)
    except FileNotFoundError:
        return


def _fail(request: OperationRequest, message: str, **ctx: Any) -> OperationError:
    return OperationError(message, node=request.node, interface=request.op.interface, operation=request.op.name,
                          **ctx)


class _Box:
    """Where one run's files go: a sandbox, or (unsandboxed) a private temporary folder."""

    def __init__(self, box: sandboxes.Sandbox | None, run_dir: Path) -> None:
        self.box, self.run_dir = box, run_dir
        self._bundle: tuple[Path, Path] | None = None

    def copy_bundle(self, root: Path | None) -> None:
        """Give a sandbox its own copy of the workflow's files: the registry keeps them readable by
        the gateway only, and a run must not see other versions' bundles beside its own."""
        if self.box is None or root is None:
            return
        copy = self.run_dir / "bundle"
        shutil.copytree(root, copy, symlinks=True, copy_function=_copy_if_present)
        sandboxes.chown_tree(self.box, copy)
        self._bundle = (root.resolve(), copy)

    def path(self, original: Path) -> Path:
        """Where ``original`` (a bundle file, say the playbook) is seen inside the run."""
        if self._bundle is not None and original.resolve().is_relative_to(self._bundle[0]):
            return self._bundle[1] / original.resolve().relative_to(self._bundle[0])
        return original

    def write(self, relative: str, content: str | None = None) -> Path:
        path = self.run_dir / relative
        if self.box is not None:
            return sandboxes.prepare(self.box, path, content)
        if content is None:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(content)
            path.chmod(0o600)
        return path


@contextlib.contextmanager
def _box(sandboxed: bool) -> Iterator[_Box]:
    if sandboxed:
        with sandboxes.sandbox(prefix="hpcwaas-ar-") as box:
            yield _Box(box, box.run_dir)
        return
    run_dir = Path(tempfile.mkdtemp(prefix="hpcwaas-ar-"))
    try:
        yield _Box(None, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class _Events:
    """ansible-runner's job events, as the run relays them (JSON lines on its stdout)."""

    def __init__(self, request: OperationRequest, hooks: RunHooks) -> None:
        self.request, self.hooks = request, hooks
        self.failures: list[tuple[str, str]] = []
        self.stats: dict[str, Any] = {}
        self.status = ""  # ansible-runner's own word: successful, failed, timeout...
        self.stdout = ""  # the tail of ansible's output, for a failure nothing else explains
        self.stderr = ""  # the sandbox's own error output (bwrap, ssh-agent), when nothing else says why

    def feed(self, raw: bytes) -> None:
        """Handle one line of the relay (a line that is not an event is the run's own noise)."""
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("hpcwaas_end") is True:
            self.status, self.stdout = str(event.get("status") or ""), str(event.get("stdout") or "")
            return
        self._handle(event)

    def _handle(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        data = ev.get("event_data") or {}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            msg = str(res.get("msg") or res.get("stderr") or res.get("reason") or "failed")
            stderr = str(res.get("stderr") or "")
            detail = msg if not stderr or stderr in msg else f"{msg}: {stderr[-500:]}"
            self.failures.append((str(data.get("task") or "?"), self.request.mask(detail)))
        elif kind == "playbook_on_stats":
            self.stats.update(data.get("artifact_data") or {})
        text = ev.get("stdout")
        if text:
            for line in str(text).splitlines():
                if line.strip():
                    self.hooks.log(self.request.mask(line))


class AnsibleExecutor:
    """Runs playbooks with ansible-runner, in a sandbox of their own (one thread per operation)."""

    needs_file = True

    def _inventory(self, request: OperationRequest, run_dir: Path) -> tuple[dict[str, Any], SSHCredential | None]:
        """The inventory, and the credential the run's agent must hold (None for a local host)."""
        host = request.host
        if host.local or host.endpoint is None:
            hostvars: dict[str, Any] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
            return {"all": {"hosts": {"localhost": hostvars}}}, None
        if host.credential is None:
            raise _fail(request, "the site has no credential to log in with",
                        hint="bind the HPCSite's credential to the gateway's credential or run_credential input")
        if request.credentials is None:
            raise _fail(request, "no credential provider is configured for SSH hosts")
        assert host.username is not None
        try:
            key = request.credentials.credential(host.credential, host.username)  # owner checked first
        except HpcwaasError as exc:
            raise _fail(request, exc.message, hint=exc.hint) from exc
        ssh_args = " ".join([
            *([f"-o CertificateFile={run_dir / 'key-cert.pub'}"] if key.certificate else []),
            f"-o UserKnownHostsFile={run_dir / 'known_hosts'}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            f"-o IdentityAgent={run_dir / 'agent.sock'}",
            "-o IdentitiesOnly=no",
            "-o PasswordAuthentication=no",
            "-o KbdInteractiveAuthentication=no",
            "-o ControlMaster=no",
            "-o ConnectTimeout=15",
        ])
        hostvars = {
            "ansible_host": host.endpoint.host,
            "ansible_port": host.endpoint.port,
            "ansible_user": host.username,
            "ansible_python_interpreter": host.python_interpreter,
            "ansible_ssh_common_args": ssh_args,
        }
        return {"all": {"hosts": {host.node or "site": hostvars}}}, key

    def _prepare(self, request: OperationRequest, box: _Box) -> str | None:
        """Write the run's inventory, variables and settings; return the key for its agent."""
        impl = request.op.implementation
        assert impl is not None
        run_dir = box.run_dir
        inventory, credential = self._inventory(request, run_dir)
        if credential is not None:
            box.write("known_hosts", _known_hosts_line(request.host))
            if credential.certificate:  # public: a file; the key goes to the agent only
                box.write("key-cert.pub", credential.certificate + "\n")
        extravars = dict(request.inputs)
        box.copy_bundle(request.bundle_root)
        extravars["hpcwaas_artifacts"] = {k: str(box.path(v)) for k, v in request.artifacts.items()}
        envvars = {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCAL_TEMP": str(run_dir / "tmp"),
            "ANSIBLE_CONFIG": str(run_dir / "ansible.cfg"),  # ignore any ansible.cfg in the cwd
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
        }
        box.write("tmp")
        box.write("home")
        box.write("project")
        box.write("ansible.cfg", "[defaults]\n")
        box.write("inventory/hosts.json", json.dumps(inventory))
        box.write("env/extravars", json.dumps(extravars, default=str))
        box.write("env/envvars", json.dumps(envvars))
        settings: dict[str, Any] = {"suppress_ansible_output": True}
        if impl.timeout:
            settings["job_timeout"] = int(impl.timeout)
        box.write("env/settings", json.dumps(settings))
        return None if credential is None else credential.private_key

    def _command(self, request: OperationRequest, box: _Box, with_agent: bool) -> list[str]:
        impl = request.op.implementation
        assert impl is not None and impl.path is not None
        argv = ["/bin/sh", "-c", _WITH_AGENT if with_agent else _WITHOUT_AGENT, str(box.run_dir),
                str(box.path(impl.path))]
        env = {"HPCWAAS_RUNNER": _RUNNER, "HPCWAAS_PYTHON": sys.executable, "HPCWAAS_RELAY": _RELAY,
               "SSH_AUTH_SOCK": str(box.run_dir / "agent.sock"), "HOME": str(box.run_dir / "home")}
        if box.box is None:
            return ["env", "-i", f"PATH={Path(sys.executable).parent}:/usr/bin:/bin",
                    *(f"{k}={v}" for k, v in env.items()), *argv]
        # The profile's own playbooks are public; a workflow's files were copied into the run.
        return box.box.command(argv, read_only=[TOSCA_DIR], env=env)

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Run the operation's playbook; raise OperationError naming the failing task."""
        impl = request.op.implementation
        assert impl is not None and impl.path is not None
        try:
            with _box(request.sandbox) as box:
                key = self._prepare(request, box)
                events = _Events(request, hooks)
                started = time.perf_counter()
                rc = self._execute(self._command(request, box, key is not None), key, events,
                                   (impl.timeout or 0) + _GRACE if impl.timeout else None)
                elapsed = time.perf_counter() - started
                if events.status != "successful" or rc != 0:
                    raise self._failure(request, events, rc)
        except sandboxes.SandboxError as exc:
            raise _fail(request, exc.message, hint=exc.hint) from exc
        return OperationResult(attributes=dict(events.stats), outputs=dict(events.stats), executor_seconds=elapsed)

    @staticmethod
    def _execute(argv: list[str], key: str | None, events: _Events, timeout: float | None) -> int:
        # Same process group as the caller: killing the deployer takes the run with it (and the
        # sandbox dies with its parent).
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                if key is not None:
                    proc.stdin.write(key.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the sandbox died before reading: its exit status says why
            killer = threading.Timer(timeout, proc.kill) if timeout is not None else None
            if killer is not None:
                killer.daemon = True
                killer.start()
            try:
                for raw in proc.stdout:
                    events.feed(raw)
                proc.wait()
            finally:
                if killer is not None:
                    killer.cancel()
            errors.seek(0)
            events.stderr = errors.read()[-1500:].decode(errors="replace")
        return proc.returncode

    @staticmethod
    def _failure(request: OperationRequest, events: _Events, rc: int) -> OperationError:
        if events.failures:
            task, msg = events.failures[-1]
            return _fail(request, msg, task=task, host=request.host.label)
        tail = (events.stdout.strip() or events.stderr)[-1500:]
        msg = f"ansible-playbook exited {rc} ({events.status or 'did not start'})"
        if tail.strip():
            msg += f": {request.mask(tail.strip())}"
        return _fail(request, msg, host=request.host.label)
