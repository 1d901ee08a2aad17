"""The engine end to end: deploy as a developer, invoke as a scientist with her own key, follow,
fail, cancel and undeploy, on the real site (sshd, Slurm, OpenBao) with real Ansible."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from hpcwaas.settings import Settings
from hpcwaas.slurm import JobState, Slurm
from hpcwaas.ssh import SiteEndpoint, connect, generate_keypair
from hpcwaas.stack.info import SiteInfo, StackInfo, VaultInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.fixtures.gateway import Person, fresh_database, kind_of, registered_site, seed_people
from tests.fixtures.sandbox_probe import UNTRUSTED, check_saw_nothing

pytestmark = [pytest.mark.site, pytest.mark.slow]
FIXTURE = Path(__file__).parent / "fixtures" / "two-accounts"


def wait_for(fetch: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float = 180,
             what: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = fetch()
        if done(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {current}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def engine_people(settings: Settings, stack: StackInfo, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Person]]:
    """A gateway with its engine on, over a database of its own: records other tests leave
    pending (with the engine off) must not queue ahead of these."""
    with fresh_database(kind_of(database_url), stack, tmp_path_factory.mktemp("engine-db")) as url:
        live = settings.model_copy(update={"database_url": url, "engine_in_gateway": True,
                                           "engine_poll_seconds": 0.2, "engine_workers": 2})
        with TestClient(create_app(live)) as client:
            yield seed_people(url, client)


@pytest.fixture(scope="module")
def deployed(engine_people: dict[str, Person], settings: Settings, site: SiteInfo) -> Iterator[dict[str, Any]]:
    dave, alice = engine_people["dave"], engine_people["alice"]
    registered_site(engine_people["admin"], site)
    name = f"twoacc-{uuid.uuid4().hex[:6]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(FIXTURE, folder)
    assert dave.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(folder)}}
                     ).status_code == 201
    dave_key = dave.post("/ssh_keys", json={"login": "sciuser2"}).json()
    alice_key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser2", dave_key["public_key"])
    authorize_key("sciuser1", alice_key["public_key"])
    resp = dave.post("/deployments", json={"workflow": name, "site": "local", "ssh_key": dave_key["id"]})
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    deployment = wait_for(lambda: dave.get(location).json(), lambda d: d["state"] in ("deployed", "failed"),
                          what="the deployment")
    log = [line["text"] for line in dave.get(f"{location}/logs").json()["lines"]]
    assert deployment["state"] == "deployed", (deployment["error"], log[-20:])
    assert deployment["nodes"]["tool"] == "started"
    yield {"name": name, "deployment": deployment, "alice_key": alice_key["id"], "dave": dave, "alice": alice}
    revoke_key("sciuser2", dave_key["public_key"])
    revoke_key("sciuser1", alice_key["public_key"])


def test_scientist_runs_it_as_herself(deployed: dict[str, Any]) -> None:
    alice = deployed["alice"]
    resp = alice.post(f"/workflows/{deployed['name']}/executions",
                      json={"inputs": {"message": "from alice"}, "ssh_key": deployed["alice_key"]})
    assert resp.status_code == 202, resp.text
    url = resp.headers["Location"]
    execution = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in ("completed", "failed", "cancelled"),
                         what="the execution")
    assert execution["state"] == "completed", (execution["error"], execution["steps"])
    assert "tool run by sciuser1" in execution["outputs"]["job_output"]
    assert execution["outputs"]["job_output"].strip().endswith("from alice")
    step = next(s for s in execution["steps"] if s.get("job_id"))
    assert step["state"] == "done" and step["started_at"] and step["finished_at"]
    logs = alice.get(f"{url}/logs").json()
    assert any("job" in line["text"] for line in logs["lines"]) and logs["finished"]


def test_failing_job_ends_failed_with_the_stderr_tail(deployed: dict[str, Any]) -> None:
    alice = deployed["alice"]
    url = alice.post(f"/workflows/{deployed['name']}/executions",
                     json={"inputs": {"exit_code": 3}, "ssh_key": deployed["alice_key"]}).headers["Location"]
    execution = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in ("completed", "failed"),
                         what="the failing execution")
    assert execution["state"] == "failed"
    assert "exit code 3" in execution["error"] and "done" in execution["error"]


def test_cancel_mid_job_cancels_the_slurm_job(deployed: dict[str, Any], site: SiteInfo) -> None:
    alice = deployed["alice"]
    url = alice.post(f"/workflows/{deployed['name']}/executions",
                     json={"inputs": {"sleep": 300}, "ssh_key": deployed["alice_key"]}).headers["Location"]
    running = wait_for(lambda: alice.get(url).json(), lambda e: any(s.get("job_id") for s in e["steps"]),
                       what="the job to be submitted")
    job_id = next(s["job_id"] for s in running["steps"] if s.get("job_id"))
    assert alice.delete(url).status_code == 202
    execution = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in ("cancelled", "failed", "completed"),
                         what="the cancellation")
    assert execution["state"] == "cancelled"
    probe = generate_keypair()
    authorize_key("sciuser1", probe.public.line)
    try:
        with connect(SiteEndpoint(site.host, site.port, site.host_key), "sciuser1", probe.private_key) as ssh:
            state = wait_for(lambda: {"s": Slurm(ssh).status(job_id).state},
                             lambda d: d["s"].is_terminal, timeout=30, what="Slurm to end the job")["s"]
    finally:
        revoke_key("sciuser1", probe.public.line)
    assert state is JobState.CANCELLED


def test_undeploy(deployed: dict[str, Any]) -> None:
    dave = deployed["dave"]
    location = f"/deployments/{deployed['deployment']['id']}"
    assert dave.delete(location).status_code == 202
    final = wait_for(lambda: dave.get(location).json(), lambda d: d["state"] in ("undeployed", "failed"),
                     what="the undeploy")
    assert final["state"] == "undeployed", final


def test_a_certificate_site_logs_in_with_per_run_certificates(engine_people: dict[str, Person], settings: Settings,
                                                              site: SiteInfo, stack: StackInfo) -> None:
    """On a site whose sshd trusts the gateway's CA, the deployment and the execution each log in
    with a new key and a short-lived certificate naming them (the site's sshd log shows the key id);
    the users' stored keys are not even authorised there."""
    dave, alice = engine_people["dave"], engine_people["alice"]
    registered_site(engine_people["admin"], site, name="certs", certificates=True)
    name = f"certacc-{uuid.uuid4().hex[:6]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(FIXTURE, folder)
    assert dave.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(folder)}}
                     ).status_code == 201
    dave_key = dave.post("/ssh_keys", json={"login": "sciuser2"}).json()
    alice_key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    sshd_log = stack.stack_dir / "sshd" / "sshd.log"
    resp = dave.post("/deployments", json={"workflow": name, "site": "certs", "ssh_key": dave_key["id"]})
    assert resp.status_code == 202, resp.text
    deployment = wait_for(lambda: dave.get(resp.headers["Location"]).json(),
                          lambda d: d["state"] in ("deployed", "failed"), what="the deployment")
    assert deployment["state"] == "deployed", deployment["error"]
    run = alice.post(f"/workflows/{name}/executions", json={"inputs": {"message": "certified"},
                                                           "ssh_key": alice_key["id"], "site": "certs"})
    assert run.status_code == 202, run.text
    execution = wait_for(lambda: alice.get(run.headers["Location"]).json(),
                         lambda e: e["state"] in ("completed", "failed", "cancelled"), what="the execution")
    assert execution["state"] == "completed", execution["error"]
    assert "tool run by sciuser1" in execution["outputs"]["job_output"]
    log = sshd_log.read_text(errors="replace")
    assert "Accepted publickey for sciuser2 from 127.0.0.1" in log
    assert any("for sciuser2" in line and "ED25519-CERT" in line for line in log.splitlines()
               if f"ID deployment:{deployment['id']} " in line)
    assert any("for sciuser1" in line and "ED25519-CERT" in line for line in log.splitlines()
               if f"ID execution:{execution['id']} " in line)
    for key in (dave_key, alice_key):  # the stored keys were never used (nor authorised)
        assert key["fingerprint"] not in log


def test_a_developers_playbooks_never_run_as_the_gateway(engine_people: dict[str, Person], settings: Settings,
                                                         site: SiteInfo, vault_info: VaultInfo) -> None:
    """Registered and deployed through the gateway, a template that runs code on the gateway host
    in every way Ansible allows (a Localhost node, lookups, delegate_to, a shipped filter plugin)
    runs in the sandbox: none of the gateway's files, tokens, database or registry reached."""
    dave = engine_people["dave"]
    registered_site(engine_people["admin"], site)
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(UNTRUSTED, folder)
    assert dave.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(folder)}}
                     ).status_code == 201
    key = dave.post("/ssh_keys", json={"login": "sciuser2"}).json()
    home = Path(settings.home)
    targets = [str(vault_info.gateway_token_file), str(vault_info.root_token_file), str(home / "hpcwaas.db"),
               str(next(home.glob("registry/*/*/service.yaml"), home / "registry")), "/etc/shadow",
               str(Path(__file__))]
    resp = dave.post("/deployments", json={"workflow": name, "site": "local", "ssh_key": key["id"],
                                           "inputs": {"targets": targets}})
    assert resp.status_code == 202, resp.text
    deployment = wait_for(lambda: dave.get(resp.headers["Location"]).json(),
                          lambda d: d["state"] in ("deployed", "failed"), what="the deployment")
    assert deployment["state"] == "deployed", deployment["error"]
    secrets = [vault_info.gateway_token(), vault_info.root_token()]
    check_saw_nothing(deployment["outputs"], targets, secrets)
