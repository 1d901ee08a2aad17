"""Slurm over SSH: submit, find by tag, follow, cancel and read the output of batch jobs.

Job scripts travel on sbatch's standard input, and every option is a separate, validated argument
(``shlex.join``), so no user value is ever interpolated into a shell line. Jobs carry a tag in
``--comment`` so that a resumed run can find a job it already submitted instead of submitting it
twice.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from hpcwaas.errors import SchedulerError, SchedulerUnavailable
from hpcwaas.ssh import CommandResult, SSHSession

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$|^\d+$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=,/-]{0,127}$")
_PATH = re.compile(r"^[A-Za-z0-9_./%@+-][A-Za-z0-9_./%@+=,-]{0,1023}$")


class JobState(StrEnum):
    """Slurm job states (the base state, without flags such as ``CANCELLED by 0``)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Map Slurm's state text (``CANCELLED by 1001``, ``RUNNING+``) to a state."""
        base = text.strip().split()[0].rstrip("+") if text.strip() else ""
        try:
            return cls(base)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """True when the job will not change state any more."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)


class JobSpec(BaseModel):
    """What to submit. Every value is validated against a strict pattern before it reaches sbatch."""

    script: str = Field(min_length=1, max_length=1_000_000, description="The batch script, with #! line.")
    name: str = "hpcwaas"
    comment: str | None = Field(default=None, description="Tag used to find the job again.")
    partition: str | None = None
    time_limit: str | None = Field(default=None, description="Slurm time, e.g. 10, 05:00, 1-00:00:00.")
    ntasks: int | None = Field(default=None, ge=1, le=100_000)
    cpus_per_task: int | None = Field(default=None, ge=1, le=1024)
    mem_mb: int | None = Field(default=None, ge=1)
    chdir: str | None = None
    output: str | None = Field(default=None, description="stdout path (Slurm patterns such as %j allowed).")
    error: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Variables the script gets (values quoted).")

    @field_validator("script")
    @classmethod
    def _shebang(cls, v: str) -> str:
        if not v.startswith("#!"):
            raise ValueError("a batch script must start with a #! line, e.g. #!/bin/bash")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _ENV_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"not shell variable names: {', '.join(map(repr, bad))} (letters, digits, '_')")
        return v

    @property
    def rendered_script(self) -> str:
        """The script with ``env`` exported after its directive block: sbatch reads ``#SBATCH``
        lines only up to the first command, so exports right after ``#!`` would hide them."""
        if not self.env:
            return self.script
        lines = self.script.splitlines(keepends=True)
        end = 1
        while end < len(lines) and (not lines[end].strip() or lines[end].lstrip().startswith("#")):
            end += 1
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items())
        head = "".join(lines[:end])
        return head + ("" if head.endswith("\n") else "\n") + exports + "".join(lines[end:])

    @field_validator("name", "partition")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise ValueError("use 1-64 letters, digits, '_', '.', '+' or '-'")
        return v

    @field_validator("time_limit")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not _TIME.fullmatch(v):
            raise ValueError("use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
        return v

    @field_validator("comment")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is not None and not _TAG.fullmatch(v):
            raise ValueError("tags use letters, digits and _.:=,/- only")
        return v

    @field_validator("chdir", "output", "error")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not _PATH.fullmatch(v) or "/../" in f"/{v}/"):
            raise ValueError("paths use letters, digits and _./%@+=,- only, without '..'")
        return v

    def sbatch_args(self) -> list[str]:
        """The sbatch options for this spec (the script itself goes on stdin)."""
        args = ["--parsable", f"--job-name={self.name}"]
        for flag, value in (
            ("--comment", self.comment),
            ("--partition", self.partition),
            ("--time", self.time_limit),
            ("--ntasks", self.ntasks),
            ("--cpus-per-task", self.cpus_per_task),
            ("--mem", f"{self.mem_mb}M" if self.mem_mb else None),
            ("--chdir", self.chdir),
            ("--output", self.output),
            ("--error", self.error),
        ):
            if value is not None:
                args.append(f"{flag}={value}")
        return args


@dataclass
class JobInfo:
    """What Slurm says about a job."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    name: str | None = None
    comment: str | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    tasks: list[JobInfo] = field(default_factory=list)  # an array job's tasks (``123_4``), in order

    def task_states(self) -> list[dict[str, object]]:
        """Each array task's id, state and exit code (empty for a plain job)."""
        return [{"id": t.job_id, "state": t.state.value, "exit_code": t.exit_code} for t in self.tasks]


@dataclass(frozen=True)
class Partition:
    """A Slurm partition as sinfo shows it."""

    name: str
    default: bool
    available: bool
    time_limit: str
    nodes: int


def _parse_exit(text: str) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol -o`` line (values may contain spaces)."""
    pairs = (tok.split("=", 1) for tok in re.split(r" (?=[A-Za-z:/]+=)", line.strip()) if "=" in tok)
    return {key.strip(): value.strip() for key, value in pairs}


def _live_info(fields: dict[str, str]) -> JobInfo:
    """One line of ``scontrol show job -o``: a job, or one task (or the pending rest) of an array."""
    exit_code, signal = _parse_exit(fields.get("ExitCode", ""))
    array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
    return JobInfo(
        job_id=f"{array}_{task}" if array and task else fields.get("JobId", ""),
        state=JobState.parse(fields.get("JobState", "")),
        exit_code=exit_code,
        signal=signal,
        reason=fields.get("Reason"),
        name=fields.get("JobName"),
        comment=fields.get("Comment"),
        stdout_path=fields.get("StdOut"),
        stderr_path=fields.get("StdErr"),
    )


def _task_order(info: JobInfo) -> tuple[int, str]:
    first = info.job_id.partition("_")[2].split("-")[0].strip("[")
    return (int(first) if first.isdigit() else 0, info.job_id)


def _combined(job_id: str, infos: list[JobInfo]) -> JobInfo:
    """The job ``job_id`` from its line(s): itself, or an array's tasks folded into one verdict."""
    if len(infos) == 1 and "_" not in infos[0].job_id:
        infos[0].job_id = job_id
        return infos[0]
    tasks = sorted(infos, key=_task_order)
    busy = [t for t in tasks if not t.state.is_terminal]
    bad = [t for t in tasks if t.state.is_terminal and (t.state is not JobState.COMPLETED or (t.exit_code or 0))]
    if busy:
        running = [t for t in busy if t.state is JobState.RUNNING]
        verdict = (running or busy)[0]
        reason = f"{len(tasks) - len(busy)} of the array's task lines done" + (f", {len(bad)} failed" if bad else "")
    elif bad:
        verdict = bad[0]
        reason = f"{len(bad)} of {len(tasks)} array tasks did not complete: " + ", ".join(
            f"{t.job_id} {t.state.value} (exit {t.exit_code})" for t in bad[:10])
    else:
        verdict, reason = tasks[0], None
    return JobInfo(job_id=job_id, state=verdict.state, exit_code=verdict.exit_code, signal=verdict.signal,
                   reason=reason, name=verdict.name, comment=verdict.comment, stdout_path=verdict.stdout_path,
                   stderr_path=verdict.stderr_path, tasks=tasks)


# What Slurm's commands print when the controller is away (restarting, overloaded): no answer
# about the job can be trusted then, and none is a refusal of it.
_CONTROLLER_AWAY = re.compile(r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|"
                              r"Connection refused|Communication connection failure|Slurm backup controller")


def _controller_away(result: CommandResult) -> bool:
    return result.exit_code != 0 and bool(_CONTROLLER_AWAY.search(result.stderr or ""))


#: A Slurm job id: ``123``, or ``123_4`` for a task of an array job.
JOB_ID = r"^[0-9]+(_[0-9]+)?$"


def check_job_id(job_id: str) -> str:
    """``job_id`` when it is a Slurm job id (``123`` or ``123_4``); else a SchedulerError."""
    if not re.fullmatch(JOB_ID, job_id):
        raise SchedulerError(f"not a Slurm job id: {job_id!r}")
    return job_id


class Slurm:
    """Slurm commands run through an open SSH session as the session's login."""

    def __init__(self, session: SSHSession) -> None:
        self.session = session

    def version(self) -> str:
        """The scheduler's version, e.g. ``slurm 22.05.8``."""
        return self.session.run(["sinfo", "--version"], check=True, timeout=60).stdout.strip()

    def partitions(self) -> list[Partition]:
        """The partitions the login can see."""
        out = self.session.run(["sinfo", "-h", "-o", "%P|%a|%l|%D"], check=True, timeout=60).stdout
        parts = []
        for line in out.splitlines():
            name, avail, limit, nodes = [*line.split("|"), "", "", "", "0"][:4]
            parts.append(
                Partition(name.rstrip("*"), name.endswith("*"), avail == "up", limit, int(nodes or 0))
            )
        return parts

    def submit(self, spec: JobSpec) -> str:
        """Submit a job and return its id."""
        result = self.session.run(["sbatch", *spec.sbatch_args()], input=spec.rendered_script, timeout=120)
        if _controller_away(result):
            raise SchedulerUnavailable(f"Slurm's controller does not answer: {result.stderr.strip()[-300:]}")
        if result.exit_code != 0:
            raise SchedulerError(
                f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}",
                stderr=result.stderr[-4000:],
            )
        job_id = result.stdout.strip().split(";")[0]
        return check_job_id(job_id)

    def submit_and_wait(self, spec: JobSpec, timeout: float = 3600) -> tuple[str, int]:
        """Submit with ``sbatch --wait``; return the job id and sbatch's exit code (the job's)."""
        result = self.session.run(["sbatch", "--wait", *spec.sbatch_args()], input=spec.rendered_script,
                                  timeout=timeout)
        job_id = result.stdout.strip().split(";")[0].strip()
        if not re.fullmatch(r"\d+", job_id):
            raise SchedulerError(
                f"sbatch refused the job: {result.stderr.strip() or result.stdout.strip()}",
                stderr=result.stderr[-4000:],
            )
        return job_id, result.exit_code

    def find_by_comment(self, comment: str) -> list[str]:
        """Ids of this login's jobs with this tag: queued, running, recently ended or in accounting.

        The controller keeps ended jobs for ``MinJobAge`` and accounting lags a few seconds behind,
        so both are asked. Accounting only keeps tags with ``AccountingStoreFlags=job_comment``
        (the local stack sets it).
        """
        JobSpec(script="#!", comment=comment)  # validates the tag
        ids: set[str] = set()
        me = self.session.username
        live = self.session.run(["scontrol", "show", "job", "-o"], timeout=60)
        if _controller_away(live):  # accounting alone may not know a job submitted a moment ago
            raise SchedulerUnavailable(f"Slurm's controller does not answer: {live.stderr.strip()[-300:]}")
        for line in live.stdout.splitlines():
            fields = _fields(line)
            if fields.get("Comment") == comment and fields.get("UserId", "").split("(")[0] == me:
                ids.add(fields.get("ArrayJobId") or fields.get("JobId", ""))  # an array's tasks are one job
        acct = self.session.run(
            ["sacct", "-n", "-P", "-X", "--starttime=now-7days", "--format=JobID,Comment"], timeout=60
        )
        if acct.exit_code == 0:
            for line in acct.stdout.splitlines():
                jid, _, tag = line.partition("|")
                if tag.strip() == comment:
                    ids.add(jid.strip().split("_")[0])
        ids.discard("")
        return sorted(ids, key=int)

    def status(self, job_id: str) -> JobInfo:
        """The job's state: live from scontrol, then from accounting once it has left the queue.

        An array job is as good as its worst task: COMPLETED only when every task completed, else
        the first failing task's state and exit code; running while any task is not done.
        """
        check_job_id(job_id)
        live = self.session.run(["scontrol", "show", "job", "-o", job_id], timeout=60)
        if live.exit_code == 0 and live.stdout.strip():
            return _combined(job_id, [_live_info(_fields(line)) for line in live.stdout.splitlines() if line.strip()])
        found = self.accounting(job_id)
        if found is None and _controller_away(live):
            raise SchedulerUnavailable(f"Slurm's controller does not answer: {live.stderr.strip()[-300:]}",
                                       job_id=job_id)
        if found is None:
            raise SchedulerError(f"Slurm does not know job {job_id}", job_id=job_id)
        return found

    def accounting(self, job_id: str) -> JobInfo | None:
        """The job as accounting records it (an array's tasks folded as :meth:`status` does)."""
        acct = self.session.run(
            ["sacct", "-n", "-P", "-X", "-j", check_job_id(job_id), "--format=JobID,State,ExitCode,JobName,Comment"],
            timeout=60,
        )
        found = []
        for line in acct.stdout.splitlines():
            jid, state, code, name, comment = [*line.split("|"), "", "", "", "", ""][:5]
            if jid == job_id or jid.startswith(f"{job_id}_"):
                exit_code, signal = _parse_exit(code)
                found.append(JobInfo(jid, JobState.parse(state), exit_code, signal, None, name, comment or None))
        return _combined(job_id, found) if found else None

    def cancel(self, job_id: str) -> None:
        """Cancel a job (no error if it already ended)."""
        result = self.session.run(["scancel", check_job_id(job_id)], timeout=60)
        if result.exit_code != 0 and "already completing or completed" not in result.stderr:
            raise SchedulerError(f"scancel failed: {result.stderr.strip()}", job_id=job_id)

    def tail(self, path: str, lines: int = 50) -> str:
        """The last lines of a file on the site (empty when it does not exist)."""
        result = self.session.run(["tail", "-n", str(int(lines)), "--", path], timeout=60)
        return result.stdout if result.exit_code == 0 else ""
