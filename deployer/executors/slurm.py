"""Batch jobs on a site's Slurm over SSH: submit once, follow to the end, report.

Not an Ansible polling loop: the deployer talks to Slurm itself through :mod:`hpcwaas.slurm`.
The job carries a tag (``--comment``) naming the deployment, run, node and operation. Before
submitting, the executor looks the tag up (and first checks the job id remembered in the
state), so a deployer killed after ``sbatch`` and resumed follows the job it already submitted
instead of submitting a second one.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Any

from deployer.errors import OperationError
from deployer.executors import OperationRequest, OperationResult, RunHooks
from hpcwaas.errors import HpcwaasError
from hpcwaas.slurm import JobInfo, JobSpec, JobState, Slurm
from hpcwaas.ssh import connect

_TAG_BAD = re.compile(r"[^A-Za-z0-9_.:=,/-]")


def job_tag(request: OperationRequest) -> str:
    """The job's ``--comment``: deployment, run, node and operation (Slurm-safe characters)."""
    return _TAG_BAD.sub("_", request.tag)[:128]


def _spec(request: OperationRequest, tag: str) -> JobSpec:
    inputs = request.inputs
    res: dict[str, Any] = inputs.get("resources") or {}
    work_dir = inputs.get("work_dir") or request.host.work_dir
    env: dict[str, Any] = inputs.get("env") or {}
    script = str(inputs.get("script") or "")
    if env:
        # Exported after the #! line, each value quoted: user values never reach the shell raw.
        first, _, rest = script.partition("\n")
        exports = "".join(
            f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items() if re.fullmatch(r"[A-Za-z_]\w*", k)
        )
        script = f"{first}\n{exports}{rest}"
    out = f"{work_dir}/{inputs.get('job_name') or 'hpcwaas'}-%j.out" if work_dir else None
    err = f"{work_dir}/{inputs.get('job_name') or 'hpcwaas'}-%j.err" if work_dir else None
    return JobSpec(
        script=script,
        name=str(inputs.get("job_name") or "hpcwaas"),
        comment=tag,
        partition=res.get("partition"),
        time_limit=res.get("time_limit"),
        ntasks=res.get("ntasks"),
        cpus_per_task=res.get("cpus_per_task"),
        mem_mb=res.get("mem_mb"),
        chdir=work_dir,
        output=out,
        error=err,
    )


class SlurmJobExecutor:
    """Submits and follows one Slurm job per operation run."""

    needs_file = False

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Submit (or find) the job, wait for a terminal state, return its outcome."""
        host = request.host
        iface, op = request.op.interface, request.op.name

        def fail(msg: str, **ctx: Any) -> OperationError:
            return OperationError(msg, node=request.node, interface=iface, operation=op, **ctx)

        if host.local or host.endpoint is None or not host.username:
            raise fail("a batch job must be hosted on an hpcwaas.nodes.HPCSite")
        if not host.credential or request.credentials is None:
            raise fail("no SSH credential for the site", hint="set the HPCSite's credential and configure Vault")
        tag = job_tag(request)
        try:
            spec = _spec(request, tag)
        except ValueError as exc:
            raise fail(f"invalid job request: {exc}") from exc
        poll = float(request.inputs.get("poll_interval") or 2.0)
        key = request.credentials.private_key(host.credential)
        started = time.perf_counter()
        try:
            with connect(host.endpoint, host.username, key) as session:
                slurm = Slurm(session)
                job_id = request.memo.get("job_id")
                if not job_id:
                    found = slurm.find_by_comment(tag)
                    if found:
                        job_id = found[-1]
                        hooks.log(f"found job {job_id} already submitted with tag {tag}")
                    else:
                        job_id = slurm.submit(spec)
                        hooks.log(f"submitted job {job_id} (tag {tag})")
                    hooks.remember({"job_id": job_id, "tag": tag})
                else:
                    hooks.log(f"following job {job_id} submitted before the restart")
                info = self._follow(slurm, str(job_id), poll, hooks)
                stdout_tail = slurm.tail(info.stdout_path or (spec.output or "").replace("%j", str(job_id)), 40)
                stderr_tail = slurm.tail(info.stderr_path or (spec.error or "").replace("%j", str(job_id)), 40)
        except HpcwaasError as exc:
            if isinstance(exc, OperationError):
                raise
            raise fail(exc.message, hint=exc.hint) from exc
        elapsed = time.perf_counter() - started
        attrs = {
            "job_id": str(job_id),
            "job_state": info.state.value,
            "exit_code": info.exit_code,
            "stdout_tail": request.mask(stdout_tail[-4000:]),
            "stderr_tail": request.mask(stderr_tail[-4000:]),
        }
        if info.state != JobState.COMPLETED or (info.exit_code or 0) != 0:
            raise fail(
                f"job {job_id} ended {info.state.value} with exit code {info.exit_code}"
                + (f": {request.mask(stderr_tail.strip()[-500:])}" if stderr_tail.strip() else ""),
                stderr=request.mask(stderr_tail[-4000:]),
                job_id=str(job_id),
            )
        return OperationResult(attributes=attrs, outputs=attrs, executor_seconds=elapsed)

    @staticmethod
    def _follow(slurm: Slurm, job_id: str, poll: float, hooks: RunHooks) -> JobInfo:
        last: JobState | None = None
        while True:
            info = slurm.status(job_id)
            if info.state != last:
                hooks.log(
                    f"job {job_id}: {info.state.value}"
                    + (f" ({info.reason})" if info.reason and info.reason != "None" else "")
                )
                last = info.state
            if info.state.is_terminal:
                return info
            time.sleep(poll)
