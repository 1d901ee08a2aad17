"""On the loopback SSH site with real Vault, Ansible over SSH and Slurm (marker: site)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from deployer import api
from deployer.model import NodeState
from hpcwaas.slurm import Slurm
from hpcwaas.ssh import SiteEndpoint, connect
from hpcwaas.stack.info import SiteInfo
from tests.deployer.conftest import USER, write
from tests.deployer.test_crash_resume import ROOT, cli, kill_group, read_state, wait_for
from tosca import EXAMPLES_DIR

pytestmark = [pytest.mark.site, pytest.mark.vault, pytest.mark.slow]


def site_inputs(site: SiteInfo, credential: dict[str, Any], work_dir: str) -> dict[str, Any]:
    return {"login_host": site.host, "port": site.port, "host_key": site.host_key, "username": USER,
            "credential": credential["ref"], "work_dir": work_dir, "partition": site.default_partition}


def test_hello_site_deploy_execute_undeploy(site: SiteInfo, credential: dict[str, Any], tmp_path: Path) -> None:
    work = f"{site.user(USER).work_dir}/waas-test-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    creds = credential["provider"]
    api.deploy(EXAMPLES_DIR / "hello-site", state, inputs=site_inputs(site, credential, work), credentials=creds)
    record = api.load_record(state)
    assert record.nodes["hello"].attributes["installed_path"] == f"{work}/hpcwaas-hello/hello.sh"
    assert credential["private_key"] not in (state / "state.json").read_text()

    api.run_workflow(state, "execute", workflow_inputs={"message": "it's $(not run)"}, credentials=creds)
    outs = api.outputs(state)
    assert "it's $(not run)" in outs["job_output"]  # the user value reached the job quoted, not executed
    job = api.load_record(state).nodes["job"].attributes
    assert job["job_state"] == "COMPLETED" and job["exit_code"] == 0

    api.undeploy(state, credentials=creds)
    record = api.load_record(state)
    assert {n.state for n in record.nodes.values()} == {NodeState.DELETED}
    endpoint = SiteEndpoint(site.host, site.port, site.host_key)
    with connect(endpoint, USER, credential["private_key"]) as session:
        assert session.run(["test", "-e", f"{work}/hpcwaas-hello"]).exit_code != 0
        session.run(["rm", "-rf", work])


JOB_TEMPLATE = """\
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
        script: |
          #!/bin/bash
          sleep 8
          echo slept
        resources: {partition: {get_input: partition}, time_limit: "00:02:00"}
        poll_interval: 0.5
      requirements: [{host: site}]
  workflows:
    execute:
      steps:
        run:
          target: job
          activities: [{call_operation: Job.run}]
"""


def test_sigkill_mid_batch_job_then_resume(site: SiteInfo, credential: dict[str, Any], tmp_path: Path) -> None:
    work = f"{site.user(USER).work_dir}/waas-crash-{uuid.uuid4().hex[:6]}"
    tpl = write(tmp_path / "p", {"service.yaml": JOB_TEMPLATE})
    state = tmp_path / "state"
    env = credential["env"]
    job_name = f"sleeper-{uuid.uuid4().hex[:8]}"
    inputs = {**site_inputs(site, credential, work), "job_name": job_name}
    args = [f"--input={k}={v}" for k, v in inputs.items()]
    deployed = subprocess.run([sys.executable, "-m", "deployer", "deploy", str(tpl), "--state", str(state), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert deployed.returncode == 0, deployed.stderr

    proc = cli("run", "execute", "--state", str(state), env=env)

    def job_memo() -> dict[str, Any] | None:
        data = read_state(state)
        if not data or data["runs"][-1]["workflow"] != "execute":
            return None
        op = next(iter(data["runs"][-1]["ops"].values()), None)
        return op["memo"] if op and op["memo"].get("job_id") else None

    memo = wait_for(job_memo, what="the job to be submitted")
    time.sleep(1.0)  # the job is running now
    kill_group(proc)
    assert proc.returncode == -signal.SIGKILL

    resumed = subprocess.run([sys.executable, "-m", "deployer", "run", "execute", "--state", str(state), "--resume"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "following job" in resumed.stderr or "found job" in resumed.stderr
    record = api.load_record(state)
    attrs = record.nodes["job"].attributes
    assert attrs["job_id"] == memo["job_id"] and attrs["job_state"] == "COMPLETED"
    assert "slept" in attrs["stdout_tail"]
    with connect(SiteEndpoint(site.host, site.port, site.host_key), USER, credential["private_key"]) as session:
        # Submitted exactly once. (The tag itself is not in accounting: the stack's slurm.conf lacks
        # AccountingStoreFlags=job_comment, so count by the job's unique name.)
        acct = session.run(["sacct", "-n", "-P", "-X", "--starttime=now-1days", "--name", job_name,
                            "--format=JobID"], check=True)
        assert acct.stdout.split() == [memo["job_id"]]
        assert Slurm(session).status(memo["job_id"]).state.value == "COMPLETED"
        session.run(["rm", "-rf", work])
    op = next(iter(record.runs[-1].ops.values()))
    assert op.attempts == 2 and op.status == "done"


def test_a_jobs_own_directives_survive_its_environment(site: SiteInfo, credential: dict[str, Any]) -> None:
    """The variables a step passes are exported after the script's #SBATCH block: exported right
    after #!, they made sbatch ignore every directive below them, and the job ran with defaults."""
    from hpcwaas.slurm import JobSpec

    script = "#!/bin/bash\n#SBATCH --nice=7\n\n# the developer's own directives\n#SBATCH --open-mode=append\n" \
             "echo \"message: $MESSAGE\"\n"
    spec = JobSpec(script=script, name="directives", env={"MESSAGE": "it's $(not run)"},
                   chdir=str(site.user(USER).work_dir))
    with connect(SiteEndpoint(site.host, site.port, site.host_key), USER, credential["private_key"]) as session:
        slurm = Slurm(session)
        job_id, code = slurm.submit_and_wait(spec, timeout=120)
        shown = session.run(["scontrol", "show", "job", job_id], check=True).stdout
        assert code == 0 and "Nice=7" in shown, shown
        info = slurm.status(job_id)
        assert info.stdout_path is not None
        assert "message: it's $(not run)" in slurm.tail(info.stdout_path, 5)
