"""Batch jobs on a site's Slurm over SSH: submit once, follow to the end, report, cancel.

Not an Ansible polling loop: the deployer talks to Slurm itself through :mod:`hpcwaas.slurm`.
The job carries a tag (``--comment``) naming the deployment, run, node and operation. Before
submitting, the executor checks the job id remembered in the state, then looks the tag up, so a
deployer killed after ``sbatch`` and resumed follows the job it already submitted instead of
submitting a second one.

Suspendable: ``start`` submits (or finds) the job and answers :class:`Waiting`; ``poll`` asks
Slurm once for its state and answers :class:`Waiting` or the outcome; ``cancel`` scancels it.
Each call opens a short SSH session and closes it, so a waiting job holds nothing. ``run`` (the
blocking path) keeps one session open while it follows the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deployer.errors import OperationError
from deployer.executors import OperationRequest, OperationResult, RunHooks, Waiting
from hpcwaas.errors import AuthenticationFailed, HostKeyMismatch, HpcwaasError, SSHError
from hpcwaas.slurm import JobInfo, JobSpec, JobState, Slurm
from hpcwaas.ssh import connect

#: Consecutive SSH failures a poll tolerates (the site's login node rebooting) before failing.
MAX_POLL_ERRORS = 5


def job_tag(request: OperationRequest) -> str:
    """The job's ``--comment``: deployment, run, node and operation (Slurm-safe, <= 128 chars)."""
    return request.tag


def _spec(request: OperationRequest, tag: str) -> JobSpec:
    inputs = request.inputs
    res: dict[str, Any] = inputs.get("resources") or {}
    work_dir = inputs.get("work_dir") or request.host.work_dir
    env: dict[str, Any] = inputs.get("env") or {}
    script = str(inputs.get("script") or "")
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
        env={str(k): str(v) for k, v in env.items()},
    )


def _fail(request: OperationRequest, msg: str, **ctx: Any) -> OperationError:
    return OperationError(msg, node=request.node, interface=request.op.interface, operation=request.op.name, **ctx)


class SlurmJobExecutor:
    """Submits, follows and cancels one Slurm job per operation run."""

    needs_file = False

    # -- shared steps -----------------------------------------------------------------------------

    @contextmanager
    def _slurm(self, request: OperationRequest) -> Iterator[Slurm]:
        host = request.host
        if host.local or host.endpoint is None or not host.username:
            raise _fail(request, "a batch job must be hosted on an hpcwaas.nodes.HPCSite")
        if not host.credential or request.credentials is None:
            raise _fail(
                request, "no SSH credential for the site", hint="set the HPCSite's credential and configure Vault"
            )
        try:
            key = request.credentials.credential(host.credential, host.username)  # owner checked first
            # The job's folder and output are private to the account (sbatch hands on its umask).
            with connect(host.endpoint, host.username, key, umask=0o077) as session:
                yield Slurm(session)
        except HpcwaasError as exc:
            if isinstance(exc, OperationError):
                raise
            raise _fail(request, exc.message, hint=exc.hint) from exc

    def _job_spec(self, request: OperationRequest) -> JobSpec:
        try:
            return _spec(request, job_tag(request))
        except ValueError as exc:
            raise _fail(request, f"invalid job request: {exc}") from exc

    def _submit_or_find(self, slurm: Slurm, request: OperationRequest, spec: JobSpec, hooks: RunHooks) -> str:
        tag = job_tag(request)
        job_id = request.memo.get("job_id")
        if job_id:
            hooks.log(f"following job {job_id} submitted before the restart")
            return str(job_id)
        found = slurm.find_by_comment(tag)
        if found:
            job_id = found[-1]
            hooks.log(f"found job {job_id} already submitted with tag {tag}")
        else:
            if spec.chdir:
                # Slurm cannot open the job's output in a missing folder (the job would fail at once).
                slurm.session.run(["mkdir", "-p", "--", spec.chdir], check=True, timeout=60)
            job_id = slurm.submit(spec)
            hooks.log(f"submitted job {job_id} (tag {tag})")
        hooks.remember({"job_id": job_id, "tag": tag})  # saved before anything else can fail
        request.memo.update(job_id=job_id, tag=tag)
        return str(job_id)

    @staticmethod
    def _describe(info: JobInfo) -> str:
        reason = f" ({info.reason})" if info.reason and info.reason != "None" else ""
        return f"job {info.job_id}: {info.state.value}{reason}"

    def _waiting(self, request: OperationRequest, info: JobInfo, polls: int) -> Waiting:
        base = float(request.inputs.get("poll_interval") or 2.0)
        ceiling = max(base, float(request.inputs.get("max_poll_interval") or 30.0))
        return Waiting(
            after=min(base * 1.5 ** min(polls, 20), ceiling),
            memo={"job_id": info.job_id, "job_state": info.state.value, "polls": polls + 1, "poll_errors": 0},
            attributes={"job_id": info.job_id, "job_state": info.state.value},
            message=self._describe(info),
        )

    def _outcome(self, slurm: Slurm, request: OperationRequest, spec: JobSpec, info: JobInfo,
                 seconds: float) -> OperationResult:
        job_id = info.job_id
        stdout_tail = slurm.tail(info.stdout_path or (spec.output or "").replace("%j", job_id), 40)
        stderr_tail = slurm.tail(info.stderr_path or (spec.error or "").replace("%j", job_id), 40)
        attrs: dict[str, Any] = {
            "job_id": job_id,
            "job_state": info.state.value,
            "exit_code": info.exit_code,
            "stdout_tail": request.mask(stdout_tail[-4000:]),
            "stderr_tail": request.mask(stderr_tail[-4000:]),
        }
        if info.tasks:  # an array: each task's state and exit code
            attrs["tasks"] = info.task_states()
        if info.state != JobState.COMPLETED or (info.exit_code or 0) != 0:
            raise _fail(
                request,
                f"job {job_id} ended {info.state.value} with exit code {info.exit_code}"
                + (f" ({info.reason})" if info.tasks and info.reason else "")
                + (f": {request.mask(stderr_tail.strip()[-500:])}" if stderr_tail.strip() else ""),
                stderr=request.mask(stderr_tail[-4000:]),
                job_id=job_id,
                **({"tasks": info.task_states()} if info.tasks else {}),
            )
        return OperationResult(attributes=attrs, outputs=attrs, executor_seconds=seconds)

    # -- suspendable protocol ---------------------------------------------------------------------

    def start(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        """Submit the job (or find the one already submitted) and report its first state."""
        spec = self._job_spec(request)
        started = time.perf_counter()
        with self._slurm(request) as slurm:
            job_id = self._submit_or_find(slurm, request, spec, hooks)
            info = slurm.status(job_id)
            if info.state.is_terminal:
                return self._outcome(slurm, request, spec, info, time.perf_counter() - started)
        hooks.log(self._describe(info))
        return self._waiting(request, info, 0)

    def poll(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        """Ask Slurm once; the outcome when the job has ended."""
        if not request.memo.get("job_id"):
            return self.start(request, hooks)  # died between sbatch and the save: find it by tag
        spec = self._job_spec(request)
        polls = int(request.memo.get("polls") or 0)
        started = time.perf_counter()
        try:
            with self._slurm(request) as slurm:
                info = slurm.status(str(request.memo["job_id"]))
                if info.state.is_terminal:
                    hooks.log(self._describe(info))
                    return self._outcome(slurm, request, spec, info, time.perf_counter() - started)
        except OperationError as exc:
            # A site that does not answer for a while does not fail the job; a refused key does.
            cause = exc.__cause__
            errors = int(request.memo.get("poll_errors") or 0) + 1
            transient = isinstance(cause, SSHError) and not isinstance(cause, AuthenticationFailed | HostKeyMismatch)
            if not transient or errors >= MAX_POLL_ERRORS:
                raise
            hooks.log(f"cannot reach the site ({exc.reason}); trying again")
            return Waiting(after=min(5.0 * errors, 60.0), memo={"poll_errors": errors})
        if info.state.value != request.memo.get("job_state"):
            hooks.log(self._describe(info))
        return self._waiting(request, info, polls)

    def cancel(self, request: OperationRequest, hooks: RunHooks) -> None:
        """scancel the remembered job, or every job carrying the operation's tag."""
        with self._slurm(request) as slurm:
            job_id = request.memo.get("job_id")
            ids = [str(job_id)] if job_id else slurm.find_by_comment(job_tag(request))
            for jid in ids:
                slurm.cancel(jid)
                hooks.log(f"cancelled job {jid}")

    # -- blocking ---------------------------------------------------------------------------------

    def run(self, request: OperationRequest, hooks: RunHooks) -> OperationResult:
        """Submit (or find) the job and follow it to a terminal state on one SSH session."""
        spec = self._job_spec(request)
        poll = float(request.inputs.get("poll_interval") or 2.0)
        started = time.perf_counter()
        with self._slurm(request) as slurm:
            job_id = self._submit_or_find(slurm, request, spec, hooks)
            last: JobState | None = None
            while True:
                info = slurm.status(job_id)
                if info.state != last:
                    hooks.log(self._describe(info))
                    last = info.state
                if info.state.is_terminal:
                    break
                time.sleep(poll)
            return self._outcome(slurm, request, spec, info, time.perf_counter() - started)
