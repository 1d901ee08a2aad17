"""Faults on the real stack, through a gateway process: a service away for a while is waited out,
and a failed execution resumes from its failed step (what finished is reused)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hpcwaas.settings import get_settings
from hpcwaas.stack.info import SiteInfo
from tests.gateway.engine.test_durability import (  # noqa: F401 - crash_rig is a fixture
    LOGIN,
    TERMINAL,
    CrashRig,
    crash_rig,
    dag_runs,
    invoke,
    log_texts,
    site_shell,
    slurm_jobs,
    step,
    wait_for,
)

pytestmark = [pytest.mark.site, pytest.mark.slow]


def test_a_failed_execution_resumes_from_its_failed_step(crash_rig: CrashRig, site: SiteInfo) -> None:  # noqa: F811
    rig = crash_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    execution_id = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 6})
    url = f"/executions/{execution_id}"
    wait_for(lambda: alice.get(url).json(), lambda e: bool((step(e, "count") or {}).get("job_id")), 120,
             "the count job to start", every=0.2)
    with site_shell(site, LOGIN) as ssh:  # the staged input vanishes while the job naps: it fails
        staged = ssh.run(["sh", "-c", f'find "$HOME" -path "*{execution_id}*" -name input -print -quit'],
                         check=True).stdout.strip()
        assert staged, "the staged input was not found on the site"
        ssh.run(["mv", staged, f"{staged}.away"], check=True)
        failed = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 120, "the failure")
        assert failed["state"] == "failed" and "count" in (failed["error"] or ""), failed
        ssh.run(["mv", f"{staged}.away", staged], check=True)
    assert alice.post(f"/executions/{execution_id}/resume").status_code == 202
    done = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 180, "the resumed run")
    assert done["state"] == "completed", (staged, done["error"])
    assert [s["state"] for s in done["steps"]] == ["done", "done", "done"], done["steps"]
    # The stage-in ran once (reused); the batch job ran twice (failed, then again); one stage-out.
    people = rig.deployed.people
    assert len(dag_runs(rig.airflow, "stage_in", people["alice"].id, execution_id)) == 1
    assert len(dag_runs(rig.airflow, "stage_out", people["alice"].id, execution_id)) == 1, done["steps"]
    with site_shell(site, LOGIN) as ssh:
        assert len(slurm_jobs(ssh, [execution_id], expect_each=2)[execution_id]) == 2
    again = alice.post(f"/executions/{execution_id}/resume")
    assert again.status_code == 409 and "only a failed or cancelled" in again.text  # completed: nothing to do


def test_airflow_away_at_stage_in_is_waited_out(crash_rig: CrashRig) -> None:  # noqa: F811
    """Seen: Airflow's API server restarting during a stage-in turned the execution FAILED at once.
    Here it is down when the stage-in starts: the step waits (saying so), and once the API server
    is back the execution completes with one DAG run per staging step."""
    rig = crash_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    pid_file = get_settings().stack_dir / "airflow" / "api-server.pid"
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    wait_for(lambda: _answers(rig), lambda up: not up, 30, "Airflow's API server to stop")
    try:
        execution_id = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 1})
        url = f"/executions/{execution_id}"
        # The log line is written as the step starts waiting; the execution's steps are saved when
        # the worker lets go of the run, a moment later: wait for those.
        shown = wait_for(lambda: alice.get(url).json(),
                         lambda e: (step(e, "stage_in") or {}).get("state") == "waiting", 60,
                         "the stage-in to wait for Airflow")
        assert shown["state"] == "running"
        staging = step(shown, "stage_in") or {}
        assert "Airflow's API server" in (staging.get("waiting_for") or ""), staging
        assert any("waiting: Airflow's API server" in line for line in log_texts(alice, execution_id))
        assert staging.get("waiting_since")
    finally:
        subprocess.run([sys.executable, "-m", "hpcwaas.stack", "up"], check=True, capture_output=True, timeout=300)
    started = time.monotonic()
    done = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 240, "the execution")
    assert done["state"] == "completed", done["error"]
    people = rig.deployed.people
    for pipeline in ("stage_in", "stage_out"):
        assert len(dag_runs(rig.airflow, pipeline, people["alice"].id, execution_id)) == 1, pipeline
    print(f"\ncompleted {time.monotonic() - started:.0f} s after Airflow came back")


def _answers(rig: CrashRig) -> bool:
    try:
        rig.airflow.health()
        return True
    except Exception:
        return False


def test_a_cancelled_execution_resumes_from_the_cancelled_step(crash_rig: CrashRig, site: SiteInfo) -> None:  # noqa: F811
    rig = crash_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    execution_id = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 30})
    url = f"/executions/{execution_id}"
    wait_for(lambda: alice.get(url).json(), lambda e: bool((step(e, "count") or {}).get("job_id")), 120,
             "the count job to start", every=0.2)
    assert alice.delete(url).status_code == 202
    cancelled = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 120, "the cancel")
    assert cancelled["state"] == "cancelled", cancelled
    assert alice.post(f"{url}/resume").status_code == 202
    done = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 240, "the resumed run")
    assert done["state"] == "completed", (done["error"], done["steps"])
    people = rig.deployed.people
    assert len(dag_runs(rig.airflow, "stage_in", people["alice"].id, execution_id)) == 1  # reused
    with site_shell(site, LOGIN) as ssh:  # the cancelled job, and the one that ran to the end
        assert len(slurm_jobs(ssh, [execution_id], expect_each=2)[execution_id]) == 2
