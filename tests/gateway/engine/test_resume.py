"""A failed execution resumed from its failed step: what finished (the stage-in) is reused, the
failed batch job runs again, and the run completes (on the real stack, through a gateway process)."""

from __future__ import annotations

import pytest

from hpcwaas.stack.info import SiteInfo
from tests.gateway.engine.test_durability import (  # noqa: F401 - crash_rig is a fixture
    LOGIN,
    TERMINAL,
    CrashRig,
    crash_rig,
    dag_runs,
    invoke,
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
    assert again.status_code == 409 and "only a failed one" in again.text  # completed: nothing to resume
