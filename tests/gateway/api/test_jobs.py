"""Ad-hoc jobs on the real Slurm site through the gateway, with the caller's Vault key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hpcwaas.stack.info import SiteInfo
from hpcwaas.stack.site_users import authorize_key
from tests.fixtures.gateway import Person, error_of, registered_site

pytestmark = pytest.mark.site


@pytest.fixture
def alice_key(people: dict[str, Person], site: SiteInfo) -> str:
    registered_site(people["admin"], site)
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    return str(key["id"])


def test_site_info_lists_partitions(people: dict[str, Person], alice_key: str, site: SiteInfo) -> None:
    resp = people["alice"].post("/sites/local/info", json={"ssh_key": alice_key})
    assert resp.status_code == 200, resp.text
    parts = {p["name"]: p for p in resp.json()["partitions"]}
    assert set(site.partitions) <= set(parts)
    assert parts[site.default_partition]["default"] is True


def test_submit_and_wait_returns_the_output(people: dict[str, Person], alice_key: str) -> None:
    script = "#!/bin/bash\necho \"hello from $(whoami) on $SLURM_JOB_PARTITION\"\necho oops >&2\n"
    resp = people["alice"].post("/sites/local/jobs", json={"ssh_key": alice_key, "script": script, "wait": True})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0
    assert "hello from sciuser1" in job["stdout_tail"]
    assert "oops" in job["stderr_tail"]
    assert job["stdout_path"].startswith("/home/sciuser1/hpcwaas/jobs/")


def test_failing_job_reports_exit_code(people: dict[str, Person], alice_key: str) -> None:
    script = "#!/bin/bash\necho dying >&2\nexit 3\n"
    job = people["alice"].post("/sites/local/jobs", json={"ssh_key": alice_key, "script": script, "wait": True})
    assert job.json()["state"] == "FAILED" and job.json()["exit_code"] == 3
    assert "dying" in job.json()["stderr_tail"]


def test_submit_follow_and_cancel(people: dict[str, Person], alice_key: str) -> None:
    alice = people["alice"]
    job = alice.post("/sites/local/jobs", json={"ssh_key": alice_key, "script": "#!/bin/sh\nsleep 300\n"}).json()
    assert job["state"] in {"PENDING", "RUNNING"}
    deadline = time.monotonic() + 30
    state = job["state"]
    while state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        state = alice.get(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key}).json()["state"]
    cancelled = alice.delete(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key})
    assert cancelled.status_code == 200
    deadline = time.monotonic() + 30
    while cancelled.json()["state"] != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.5)
        cancelled = alice.get(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key})
    assert cancelled.json()["state"] == "CANCELLED"


def test_bad_job_input_is_refused_before_reaching_the_site(people: dict[str, Person], alice_key: str) -> None:
    alice = people["alice"]
    no_shebang = alice.post("/sites/local/jobs", json={"ssh_key": alice_key, "script": "echo hi"})
    assert no_shebang.status_code == 422 and "#!" in error_of(no_shebang)["message"]
    injected = alice.post(
        "/sites/local/jobs",
        json={"ssh_key": alice_key, "script": "#!/bin/sh\ntrue\n", "partition": "debug; touch /tmp/pwned"},
    )
    assert injected.status_code == 422 and "partition" in error_of(injected)["message"]
    unknown_partition = alice.post(
        "/sites/local/jobs", json={"ssh_key": alice_key, "script": "#!/bin/sh\ntrue\n", "partition": "nope"}
    )
    assert unknown_partition.status_code == 422
    assert "sbatch refused" in error_of(unknown_partition)["message"]
    bad_id = alice.get("/sites/local/jobs/1;id", params={"ssh_key": alice_key})
    assert bad_id.status_code == 422


def test_a_job_is_its_submitters_alone(people: dict[str, Person], alice_key: str, site: SiteInfo) -> None:
    """Another scientist can neither read nor cancel alice's job (404 before any login), and what
    the job wrote is private to alice's site account."""
    alice, bob = people["alice"], people["bob"]
    job = alice.post("/sites/local/jobs", json={"ssh_key": alice_key, "script": "#!/bin/sh\necho mine\nsleep 30\n"}
                     ).json()
    bob_key = bob.post("/ssh_keys", json={"login": "sciuser2"}).json()
    authorize_key("sciuser2", bob_key["public_key"])
    peek = bob.get(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": bob_key["id"]})
    assert peek.status_code == 404 and "of yours" in error_of(peek)["message"]
    stop = bob.delete(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": bob_key["id"]})
    assert stop.status_code == 404
    mine = alice.get(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key})
    assert mine.status_code == 200 and mine.json()["state"] in {"PENDING", "RUNNING", "COMPLETED"}
    deadline = time.monotonic() + 30
    while "mine" not in (mine.json().get("stdout_tail") or "") and time.monotonic() < deadline:
        time.sleep(0.5)
        mine = alice.get(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key})
    out = Path(mine.json()["stdout_path"])
    assert out.stat().st_mode & 0o077 == 0, oct(out.stat().st_mode)  # the site is this machine
    assert alice.delete(f"/sites/local/jobs/{job['job_id']}", params={"ssh_key": alice_key}).status_code == 200
