"""hpcwaas.slurm against the real Slurm site, over the real sshd."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from hpcwaas.slurm import JobSpec, JobState, Slurm
from hpcwaas.ssh import SiteEndpoint, SSHSession, connect, generate_keypair
from hpcwaas.stack.info import SiteInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def session(site: SiteInfo) -> Iterator[SSHSession]:
    pair = generate_keypair()
    authorize_key("sciuser2", pair.public.line)
    with connect(SiteEndpoint(site.host, site.port, site.host_key), "sciuser2", pair.private_key) as ssh:
        yield ssh
    revoke_key("sciuser2", pair.public.line)


def test_a_finished_job_is_found_by_its_tag_at_once(session: SSHSession) -> None:
    slurm = Slurm(session)
    tag = f"hpcwaas:test:{uuid.uuid4().hex[:12]}"
    spec = JobSpec(script="#!/bin/sh\necho tagged\n", comment=tag, chdir="/home/sciuser2",
                   output="/home/sciuser2/tagged-%j.out")
    job_id, rc = slurm.submit_and_wait(spec)
    assert rc == 0
    # Right after the end: the controller still knows it (accounting may lag a few seconds).
    assert slurm.find_by_comment(tag) == [job_id]
    info = slurm.status(job_id)
    assert info.state is JobState.COMPLETED and info.comment == tag
    assert slurm.tail(info.stdout_path or "") == "tagged\n"


def test_tags_of_other_users_are_not_returned(session: SSHSession, site: SiteInfo) -> None:
    other = generate_keypair()
    authorize_key("sciuser1", other.public.line)
    tag = f"hpcwaas:test:{uuid.uuid4().hex[:12]}"
    try:
        with connect(SiteEndpoint(site.host, site.port, site.host_key), "sciuser1", other.private_key) as ssh1:
            Slurm(ssh1).submit_and_wait(JobSpec(script="#!/bin/sh\ntrue\n", comment=tag, chdir="/home/sciuser1",
                                                output="/home/sciuser1/other-%j.out"))
    finally:
        revoke_key("sciuser1", other.public.line)
    assert Slurm(session).find_by_comment(tag) == []


def test_running_job_status_and_cancel(session: SSHSession) -> None:
    slurm = Slurm(session)
    job_id = slurm.submit(JobSpec(script="#!/bin/sh\nsleep 120\n", chdir="/home/sciuser2",
                                  output="/home/sciuser2/sleep-%j.out"))
    deadline = time.monotonic() + 30
    while slurm.status(job_id).state is not JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.3)
    slurm.cancel(job_id)
    deadline = time.monotonic() + 30
    while not slurm.status(job_id).state.is_terminal and time.monotonic() < deadline:
        time.sleep(0.3)
    assert slurm.status(job_id).state is JobState.CANCELLED
    slurm.cancel(job_id)  # cancelling an ended job is not an error


def test_an_array_whose_task_fails_is_not_completed(session: SSHSession) -> None:
    """Seen: an array job whose second task failed was read back COMPLETED (the last scontrol line)."""
    slurm = Slurm(session)
    tag = f"hpcwaas:test:{uuid.uuid4().hex[:12]}"
    script = ("#!/bin/sh\n#SBATCH --array=1-3\n#SBATCH --output=/home/sciuser2/array-%A_%a.out\n"
              'echo "task $SLURM_ARRAY_TASK_ID"; [ "$SLURM_ARRAY_TASK_ID" != 2 ]\n')
    job_id = slurm.submit(JobSpec(script=script, chdir="/home/sciuser2", comment=tag))
    deadline = time.monotonic() + 60
    while not (info := slurm.status(job_id)).state.is_terminal and time.monotonic() < deadline:
        time.sleep(0.5)
    assert info.state is JobState.FAILED and info.exit_code == 1, info
    assert info.task_states() == [{"id": f"{job_id}_1", "state": "COMPLETED", "exit_code": 0},
                                  {"id": f"{job_id}_2", "state": "FAILED", "exit_code": 1},
                                  {"id": f"{job_id}_3", "state": "COMPLETED", "exit_code": 0}]
    assert info.reason is not None and f"{job_id}_2 FAILED (exit 1)" in info.reason
    assert slurm.find_by_comment(tag) == [job_id]  # one job, however many tasks
    # The same verdict from accounting (what is left once the controller forgets the job).
    deadline = time.monotonic() + 30
    while (acct := slurm.accounting(job_id)) is None or len(acct.tasks) < 3:
        assert time.monotonic() < deadline, "accounting never recorded the array's three tasks"
        time.sleep(0.5)
    assert acct.state is JobState.FAILED and acct.task_states() == info.task_states()
