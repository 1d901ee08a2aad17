"""Non-blocking batch jobs on the real site: submit, wait, poll across processes, crash, cancel, fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer import api
from deployer.engine import Engine, Event
from deployer.loader import open_package
from deployer.state import DeploymentRecord, FolderStateStore, RunRecord
from deployer.validate import load_topology
from hpcwaas.slurm import Slurm
from hpcwaas.ssh import SiteEndpoint, SSHSession, connect
from hpcwaas.stack.info import SiteInfo
from tests.deployer.conftest import USER, write
from tests.deployer.test_crash_resume import ROOT, kill_group, read_state, wait_for

pytestmark = [pytest.mark.site, pytest.mark.vault, pytest.mark.slow]

TEMPLATE = """\
tosca_definitions_version: tosca_simple_yaml_1_3
topology_template:
  inputs:
    login_host: {type: string}
    port: {type: integer}
    host_key: {type: string}
    username: {type: string}
    credential: {type: string}
    work_dir: {type: string}
    partition: {type: string}
    job_name: {type: string}
    script: {type: string}
  node_templates:
    site:
      type: hpcwaas.nodes.HPCSite
      properties:
        login_host: {get_input: login_host}
        port: {get_input: port}
        host_key: {get_input: host_key}
        username: {get_input: username}
        credential: {get_input: credential}
        work_dir: {get_input: work_dir}
    job:
      type: hpcwaas.nodes.BatchJob
      properties:
        job_name: {get_input: job_name}
        script: {get_input: script}
        resources: {partition: {get_input: partition}, time_limit: "00:03:00"}
        poll_interval: 0.5
        max_poll_interval: 2.0
      requirements: [{host: site}]
  workflows:
    execute:
      steps:
        run:
          target: job
          activities: [{call_operation: Job.run}]
  outputs:
    job_id: {value: {get_attribute: [job, job_id]}}
    out: {value: {get_attribute: [job, stdout_tail]}}
"""


class SiteCase:
    """One test's template, work dir on the site, job name and inputs."""

    def __init__(self, site: SiteInfo, credential: dict[str, Any], tmp_path: Path, script: str) -> None:
        self.site, self.credential = site, credential
        self.endpoint = SiteEndpoint(site.host, site.port, site.host_key)
        self.work = f"{site.user(USER).work_dir}/waas-nb-{uuid.uuid4().hex[:6]}"
        self.job_name = f"nb-{uuid.uuid4().hex[:8]}"
        self.tpl = write(tmp_path / "p", {"service.yaml": TEMPLATE})
        self.state = tmp_path / "state"
        self.inputs = {"login_host": site.host, "port": site.port, "host_key": site.host_key, "username": USER,
                       "credential": credential["ref"], "work_dir": self.work,
                       "partition": site.default_partition, "job_name": self.job_name, "script": script}
        with self.session() as session:
            session.run(["mkdir", "-p", self.work], check=True)

    def session(self) -> Any:
        return connect(self.endpoint, USER, self.credential["private_key"])

    def engine(self, events: list[Event] | None = None, **options: Any) -> Engine:
        """A fresh engine over the folder store: each call of a worker builds one."""
        with open_package(self.tpl) as package:
            topology, resolved = load_topology(package, {**self.inputs})
        return Engine(topology, FolderStateStore(self.state), deployment_id="nb", inputs=resolved,
                      credentials=self.credential["provider"], on_event=events.append if events is not None else None,
                      **options)

    def jobs_named(self, session: SSHSession) -> list[str]:
        """Job ids with this test's job name in accounting (which lags the controller a little)."""

        def read() -> list[str]:
            acct = session.run(["sacct", "-n", "-P", "-X", "--starttime=now-1days", "--name", self.job_name,
                                "--format=JobID"], check=True)
            return acct.stdout.split()

        wait_for(read, timeout=60, what="accounting to record the job")
        time.sleep(1.0)
        return read()

    def cleanup(self) -> None:
        with self.session() as session:
            session.run(["rm", "-rf", self.work])


@pytest.fixture
def case_factory(site: SiteInfo, credential: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    made: list[SiteCase] = []

    def make(script: str) -> SiteCase:
        made.append(SiteCase(site, credential, tmp_path / f"c{len(made)}", script))
        return made[-1]

    yield make
    for case in made:
        case.cleanup()


def poll_until_done(case: SiteCase, limit: float = 180.0) -> list[RunRecord]:
    """Resume with fresh engines, honouring wake_at, until the run leaves ``waiting``."""
    calls = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        run = case.engine().run_workflow("execute", resume=True, blocking=False)
        calls.append(run.model_copy(deep=True))
        if run.status != "waiting":
            return calls
        time.sleep(max(0.0, (run.wake_at or 0) - time.time()))
    raise AssertionError("the job never ended")


def test_submit_wait_poll_across_processes_after_sigkill(case_factory: Any) -> None:
    case = case_factory("#!/bin/bash\nsleep 15\necho computed 42\n")
    env = case.credential["env"]
    args = [f"--input={k}={v}" for k, v in case.inputs.items()]
    # process 1: starts the run and is SIGKILLed once the job id is saved (mid-call or just after)
    proc = subprocess.Popen([sys.executable, "-m", "deployer", "run", "execute", "--state", str(case.state),
                             "--template", str(case.tpl), "--no-wait", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def job_memo() -> dict[str, Any] | None:
        data = read_state(case.state)
        if not data or not data["runs"]:
            return None
        op = next(iter(data["runs"][-1]["ops"].values()), None)
        return op["memo"] if op and op["memo"].get("job_id") else None

    memo = wait_for(job_memo, what="the job to be submitted")
    kill_group(proc)
    job_id = memo["job_id"]

    # processes 2..n: each polls once and exits 3 while the job runs, 0 when it is done
    codes = []
    for _ in range(60):
        step = subprocess.run([sys.executable, "-m", "deployer", "run", "execute", "--state", str(case.state),
                               "--template", str(case.tpl), "--resume", "--no-wait", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        codes.append(step.returncode)
        assert step.returncode in (0, 3), step.stdout + step.stderr
        if step.returncode == 0:
            break
        time.sleep(1.0)
    assert codes[-1] == 0 and 3 in codes  # it waited at least once, in a process that held nothing after
    record = api.load_record(case.state)
    run = record.runs[-1]
    op = next(iter(run.ops.values()))
    assert run.status == "done" and op.status == "done" and op.memo["job_id"] == job_id and op.polls >= 1
    assert record.nodes["job"].attributes["job_state"] == "COMPLETED"
    assert "computed 42" in record.nodes["job"].attributes["stdout_tail"]
    with case.session() as session:
        assert case.jobs_named(session) == [job_id]  # exactly one sbatch


def test_died_between_sbatch_and_save_finds_the_job_by_tag(case_factory: Any) -> None:
    case = case_factory("#!/bin/bash\nsleep 3\necho tagged\n")
    store = FolderStateStore(case.state)
    real_save = store.save

    def save_until_job_id(record: DeploymentRecord) -> None:
        # What a SIGKILL right after sbatch leaves: nothing from the job id on is saved.
        if any(op.memo.get("job_id") for run in record.runs for op in run.ops.values()):
            raise SystemExit("killed")
        real_save(record)

    engine = case.engine()
    engine.store = store
    store.save = save_until_job_id  # type: ignore[method-assign]
    with pytest.raises(BaseException):  # noqa: B017 - the simulated death
        engine.run_workflow("execute", blocking=False)
    saved = api.load_record(case.state).runs[-1]
    assert saved.status == "running" and next(iter(saved.ops.values())).memo == {}

    events: list[Event] = []
    run = case.engine(events).run_workflow("execute", resume=True, blocking=False)
    assert any(e.kind == "log" and e.message.startswith("found job") for e in events)
    if run.status == "waiting":
        run = poll_until_done(case)[-1]
    assert run.status == "done"
    op = next(iter(run.ops.values()))
    assert op.attempts == 2
    with case.session() as session:
        assert case.jobs_named(session) == [op.memo["job_id"]]


def test_cancel_scancels_the_job(case_factory: Any) -> None:
    case = case_factory("#!/bin/bash\nsleep 120\n")
    first = case.engine().run_workflow("execute", blocking=False)
    assert first.status == "waiting"
    job_id = next(iter(first.ops.values())).memo["job_id"]
    run = api.cancel_run(case.state, case.tpl, inputs=case.inputs, credentials=case.credential["provider"])
    assert run.status == "cancelled"
    assert {op.status for op in run.ops.values()} == {"cancelled"}
    with case.session() as session:
        state = wait_for(lambda: (s := Slurm(session).status(job_id).state.value) == "CANCELLED" and s,
                         timeout=30, what="Slurm to cancel the job")
        assert state == "CANCELLED"
    assert case.engine().resume().status == "cancelled"  # never resumed


def test_failing_job_ends_failed_with_the_stderr_tail(case_factory: Any) -> None:
    case = case_factory("#!/bin/bash\necho starting\necho 'disk quota exceeded' >&2\nexit 3\n")
    run = case.engine().run_workflow("execute", blocking=False)
    if run.status == "waiting":
        run = poll_until_done(case)[-1]
    assert run.status == "failed"
    assert "exit code 3" in (run.error or "") and "disk quota exceeded" in (run.error or "")
    op = next(iter(run.ops.values()))
    assert op.status == "failed" and op.memo["job_id"] and "disk quota exceeded" in (op.error or "")


def test_each_call_holds_no_connection(case_factory: Any) -> None:
    case = case_factory("#!/bin/bash\nsleep 4\n")
    run = case.engine().run_workflow("execute", blocking=False)
    assert run.status == "waiting"
    me = os.getpid()
    out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
    assert not [line for line in out.splitlines() if f":{case.site.port}" in line and f"pid={me}," in line]
    assert poll_until_done(case)[-1].status == "done"


class Sshd:
    """A second sshd of the site (the stack's config, on a port of its own) to stop and start."""

    def __init__(self, folder: Path) -> None:
        config = Path("/var/tmp/hpcwaas-stack/sshd/sshd_config").read_text()
        self.port = _free_port()
        self.config = folder / "sshd_config"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text("".join(
            f"ListenAddress 127.0.0.1:{self.port}\n" if line.startswith("ListenAddress") else
            "PidFile none\n" if line.startswith("PidFile") else line + "\n" for line in config.splitlines()))
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(self.config), "-E", str(self.log)])
        wait_for(lambda: _port_open(self.port), timeout=20, what="the second sshd")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_an_sshd_away_at_submit_is_waited_out_and_the_job_runs_once(case_factory: Any, tmp_path: Path) -> None:
    """Seen: a site whose sshd was down for a moment turned the run FAILED at once."""
    case = case_factory("#!/bin/bash\necho came back\n")
    sshd = Sshd(tmp_path / "sshd")
    case.inputs["port"] = sshd.port  # nothing listens yet: connection refused
    try:
        run = case.engine().run_workflow("execute", blocking=False)
        assert run.status == "waiting", run.error
        op = next(iter(run.ops.values()))
        assert op.status == "waiting" and "login node (SSH)" in op.memo["transient_reason"], op.memo
        assert op.memo["transient_retry"] == "start" and not op.memo.get("job_id")
        sshd.start()
        final = poll_until_done(case)[-1]
        assert final.status == "done", final.error
        assert not any(k.startswith("transient") for k in next(iter(final.ops.values())).memo)
        with case.session() as session:
            assert len(case.jobs_named(session)) == 1  # submitted once
    finally:
        sshd.stop()


def test_a_service_away_past_the_window_fails_saying_what_and_how_long(case_factory: Any, tmp_path: Path) -> None:
    case = case_factory("#!/bin/bash\ntrue\n")
    case.inputs["port"] = _free_port()  # never answers
    run = case.engine(transient_window=1.0).run_workflow("execute", blocking=False)
    assert run.status == "waiting"
    time.sleep(max(1.2, (run.wake_at or 0) - time.time()))  # past the window, and due again
    run = case.engine(transient_window=1.0).run_workflow("execute", resume=True, blocking=False)
    assert run.status == "failed"
    assert "the site's login node (SSH)" in (run.error or "") and "still away after" in (run.error or ""), run.error


def test_a_slurm_controller_away_at_submit_is_waited_out_without_a_second_job(case_factory: Any) -> None:
    """Seen: a Slurm controller restarting at submit time turned the run FAILED at once. Here it
    hangs (SIGSTOP) through the submit: the step waits, and the job that sbatch may have left in
    the controller's queue is found by its tag, not submitted again."""
    import signal

    from hpcwaas.settings import get_settings

    case = case_factory("#!/bin/bash\necho after the controller came back\n")
    pid = int((get_settings().stack_dir / "slurm" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        run = case.engine().run_workflow("execute", blocking=False)  # its commands time out (~10 s)
        op = next(iter(run.ops.values()))
        assert run.status == "waiting" and "batch scheduler" in op.memo.get("transient_reason", ""), (run, op.memo)
    finally:
        os.kill(pid, signal.SIGCONT)
    final = poll_until_done(case)[-1]
    assert final.status == "done", final.error
    with case.session() as session:
        assert len(case.jobs_named(session)) == 1
