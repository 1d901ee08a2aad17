"""Run an operation as an Ansible playbook through ansible-runner.

One private data dir per run (0700, removed afterwards: it holds the extra vars, which may carry
secret values). The host is ``localhost`` over the local connection, or a site's login host
over SSH with the key in a private ssh-agent (:class:`deployer.credentials.AgentPool`) and the
host key pinned in a per-run ``known_hosts`` with ``StrictHostKeyChecking=yes``.
``set_stats`` data become the node's attributes and the operation's outputs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ansible_runner

from deployer.errors import OperationError
from deployer.executors import HostSpec, OperationRequest, OperationResult, RunHooks

_VENV_BIN = str(Path(sys.executable).parent)


def _known_hosts_line(host: HostSpec) -> str:
    assert host.endpoint is not None
    name = host.endpoint.host if host.endpoint.port == 22 else f"[{host.endpoint.host}]:{host.endpoint.port}"
    return f"{name} {host.endpoint.host_key.strip()}\n"


class AnsibleExecutor:
    """Runs playbooks with ansible-runner (in this process, one thread per operation)."""

    needs_file = True

    def _inventory(self, request: OperationRequest, pdd: Path) -> tuple[dict[str, Any], dict[str, str]]:
        host = request.host
        env: dict[str, str] = {}
        if host.local or host.endpoint is None:
            hostvars: dict[str, Any] = {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            }
            return {"all": {"hosts": {"localhost": hostvars}}}, env
        if host.credential is None:
            raise OperationError(
                "the site has no credential to log in with",
                node=request.node,
                interface=request.op.interface,
                operation=request.op.name,
                hint="set the HPCSite's credential property to '<user_id>/<key_id>'",
            )
        if request.agents is None:
            raise OperationError(
                "no credential provider is configured for SSH hosts",
                node=request.node,
                interface=request.op.interface,
                operation=request.op.name,
            )
        sock = request.agents.socket_for(host.credential)
        known = pdd / "known_hosts"
        known.write_text(_known_hosts_line(host))
        ssh_args = " ".join(
            [
                f"-o UserKnownHostsFile={known}",
                "-o GlobalKnownHostsFile=/dev/null",
                "-o StrictHostKeyChecking=yes",
                f"-o IdentityAgent={sock}",
                "-o PasswordAuthentication=no",
                "-o KbdInteractiveAuthentication=no",
                "-o ControlMaster=no",
                "-o ConnectTimeout=15",
            ]
        )
        hostvars = {
            "ansible_host": host.endpoint.host,
            "ansible_port": host.endpoint.port,
            "ansible_user": host.username,
            "ansible_python_interpreter": host.python_interpreter,
            "ansible_ssh_common_args": ssh_args,
        }
        return {"all": {"hosts": {host.node or "site": hostvars}}}, env

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Run the operation's playbook; raise OperationError naming the failing task."""
        impl = request.op.implementation
        assert impl is not None and impl.path is not None
        pdd = Path(tempfile.mkdtemp(prefix="hpcwaas-ar-"))
        os.chmod(pdd, 0o700)
        failures: list[tuple[str, str]] = []
        stats_data: dict[str, Any] = {}

        def on_event(ev: dict[str, Any]) -> bool:
            kind = ev.get("event")
            data = ev.get("event_data") or {}
            if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                res = data.get("res") or {}
                msg = str(res.get("msg") or res.get("stderr") or res.get("reason") or "failed")
                stderr = str(res.get("stderr") or "")
                detail = msg if not stderr or stderr in msg else f"{msg}: {stderr[-500:]}"
                failures.append((str(data.get("task") or "?"), request.mask(detail)))
            elif kind == "playbook_on_stats":
                stats_data.update(data.get("artifact_data") or {})
            text = ev.get("stdout")
            if text:
                for line in str(text).splitlines():
                    if line.strip():
                        hooks.log(request.mask(line))
            return False  # do not keep job_events on disk: the run dir is removed anyway

        try:
            inventory, env = self._inventory(request, pdd)
            extravars = dict(request.inputs)
            extravars["hpcwaas_artifacts"] = {k: str(v) for k, v in request.artifacts.items()}
            envvars = {
                "PATH": _VENV_BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_LOCAL_TEMP": str(pdd / "tmp"),
                "ANSIBLE_CONFIG": str(pdd / "ansible.cfg"),  # ignore any ansible.cfg in the cwd
                "ANSIBLE_DEPRECATION_WARNINGS": "False",
                **env,
            }
            (pdd / "ansible.cfg").write_text("[defaults]\n")
            started = time.perf_counter()
            r = ansible_runner.run(
                private_data_dir=str(pdd),
                playbook=str(impl.path),
                inventory=inventory,
                extravars=extravars,
                envvars=envvars,
                event_handler=on_event,
                ident="run",
                quiet=True,
                timeout=int(impl.timeout) if impl.timeout else None,
            )
            elapsed = time.perf_counter() - started
            if r.status != "successful" or r.rc != 0:
                if failures:
                    task, msg = failures[-1]
                else:
                    task = None
                    tail = ""
                    try:
                        tail = (r.stdout.read() or "")[-1500:]
                    except Exception:  # the stdout file may be missing after a crash
                        tail = ""
                    msg = f"ansible-playbook exited {r.rc} ({r.status})" + (
                        f": {request.mask(tail.strip())}" if tail else ""
                    )
                raise OperationError(
                    msg,
                    node=request.node,
                    interface=request.op.interface,
                    operation=request.op.name,
                    task=task,
                    host=request.host.label,
                )
            return OperationResult(attributes=dict(stats_data), outputs=dict(stats_data), executor_seconds=elapsed)
        finally:
            shutil.rmtree(pdd, ignore_errors=True)
