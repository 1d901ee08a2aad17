"""Pipelines through the gateway and the real Airflow services (REST v2), sshd and OpenBao.

The runs really go through Airflow's scheduler and a LocalExecutor worker (~10 s each), so
they run on the SQLite gateway database only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from data_logistics.client import AirflowClient
from data_logistics.credentials import burn
from hpcwaas.settings import Settings
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key
from tests.fixtures.gateway import Person, error_of, registered_site

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]


@pytest.fixture
def airflow(stack: StackInfo, settings: Settings) -> AirflowClient:
    if "postgresql" in (settings.database_url or ""):
        pytest.skip("Airflow runs are exercised once, with the SQLite gateway database")
    if stack.airflow is None:
        pytest.fail("the stack has no Airflow; run `python -m hpcwaas.stack up`", pytrace=False)
    return AirflowClient(stack.airflow.url, stack.airflow.username, stack.airflow.password())


@pytest.fixture
def alice_key(people: dict[str, Person], site: SiteInfo) -> tuple[str, str]:
    """(key id, its private-key needle) for alice as sciuser1."""
    registered_site(people["admin"], site)
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    return str(key["id"]), ""


def _wait(person: Person, pipeline: str, run_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = person.get(f"/pipelines/{pipeline}/runs/{run_id}").json()
        if body["state"] in ("success", "failed") or time.monotonic() > deadline:
            return dict(body)
        time.sleep(1)


def _airflow_run_count(airflow: AirflowClient) -> int:
    return len(airflow.list_runs("~", limit=1000))


def test_stage_in_and_stage_out_through_airflow(people: dict[str, Person], alice_key: tuple[str, str],
                                               airflow: AirflowClient, stack: StackInfo, unique: str) -> None:
    alice = people["alice"]
    assert stack.airflow is not None
    storage = stack.airflow.storage_root
    own = storage / "users" / alice.id  # a user's file: paths are in her own folder of the storage
    data = os.urandom(3 * 1024 * 1024)
    (own / "tests").mkdir(parents=True, exist_ok=True)
    (own / "tests" / f"{unique}.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    listed = alice.get("/pipelines")
    assert listed.status_code == 200, listed.text
    assert {p["name"] for p in listed.json()} == {"stage_in", "stage_out", "image_transfer", "site_to_site", "sync"}

    began = time.monotonic()
    started = alice.post("/pipelines/stage_in/runs", json={
        "ssh_key": alice_key[0], "source": f"file:tests/{unique}.bin", "target": f"sftp://local/dl/{unique}.bin",
        "sha256": digest, "label": "inputs"})
    assert started.status_code == 201, started.text
    run = started.json()
    assert run["requested_by"] == alice.id and run["target"] == {"kind": "site", "path": f"dl/{unique}.bin",
                                                                 "site": "local", "login": "sciuser1"}
    done = _wait(alice, "stage_in", run["id"])
    assert done["state"] == "success", done
    assert done["result"]["sha256"] == digest and done["progress"]["phase"] == "done"
    assert done["tasks"][0]["state"] == "success"
    print(f"stage_in through Airflow: {time.monotonic() - began:.1f} s")
    assert any(r["id"] == run["id"] for r in alice.get("/pipelines/runs").json())
    assert all(r["id"] != run["id"] for r in people["bob"].get("/pipelines/runs").json())
    assert people["bob"].get(f"/pipelines/stage_in/runs/{run['id']}").status_code == 404
    logs = alice.get(f"/pipelines/stage_in/runs/{run['id']}", params={"logs": "true"}).json()["logs"]
    assert any("progress phase=done" in line for line in logs)

    out = alice.post("/pipelines/stage_out/runs", json={
        "ssh_key": alice_key[0], "source": f"sftp://local/dl/{unique}.bin", "target": f"file:results/{unique}.bin",
        "label": f"result {unique}"})
    assert out.status_code == 201, out.text
    done = _wait(alice, "stage_out", out.json()["id"])
    assert done["state"] == "success", done
    assert (own / "results" / f"{unique}.bin").read_bytes() == data
    registered = done["registered_dataset"]
    assert registered, done.get("registration_error")
    entry = alice.get(f"/catalogue/datasets/{registered}")
    assert entry.status_code == 200, entry.text
    assert entry.json()["checksum_sha256"] == digest
    again = alice.get(f"/pipelines/stage_out/runs/{out.json()['id']}").json()
    assert again["registered_dataset"] == registered  # registered once


def test_catalogue_dataset_staged_in_by_id(people: dict[str, Person], alice_key: tuple[str, str],
                                           airflow: AirflowClient, stack: StackInfo, unique: str) -> None:
    """``dataset:<id>`` is resolved by the gateway for the caller: her restricted dataset is staged
    in with its catalogue checksum verified; another user, or a dataset with no location, is
    refused with a clear message before any run starts (no fallback location)."""
    alice, bob = people["alice"], people["bob"]
    assert stack.airflow is not None
    data = os.urandom(2 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    path = stack.airflow.storage_root / "tests" / f"dataset-{unique}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    made = alice.post("/catalogue/datasets", json={
        "title": f"Restricted input {unique}", "location": f"file://{path}", "access": "restricted",
        "checksum_sha256": digest, "size_bytes": len(data)})
    assert made.status_code == 201, made.text
    dataset = made.json()["id"]
    nowhere = alice.post("/catalogue/datasets", json={"title": f"No location yet {unique}", "access": "public"})
    assert nowhere.status_code == 201, nowhere.text
    bob_key = bob.post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]

    before = _airflow_run_count(airflow)
    hidden = bob.post("/pipelines/stage_in/runs", json={
        "ssh_key": bob_key, "source": f"dataset:{dataset}", "target": f"sftp://local/dl/{unique}.bin"})
    assert hidden.status_code == 404, hidden.text
    assert dataset in error_of(hidden)["message"]
    unresolved = alice.post("/pipelines/stage_in/runs", json={
        "ssh_key": alice_key[0], "source": f"dataset:{nowhere.json()['id']}", "target": f"sftp://local/{unique}"})
    assert unresolved.status_code == 422, unresolved.text
    assert "no location" in error_of(unresolved)["message"]
    assert _airflow_run_count(airflow) == before

    started = alice.post("/pipelines/stage_in/runs", json={
        "ssh_key": alice_key[0], "source": f"dataset:{dataset}", "target": f"sftp://local/dl/{unique}.bin"})
    assert started.status_code == 201, started.text
    assert started.json()["source"]["sha256"] == digest  # the catalogue's checksum, verified at the end
    done = _wait(alice, "stage_in", started.json()["id"])
    assert done["state"] == "success", done
    assert done["result"]["sha256"] == digest
    landed = Path(done["result"]["target"]["path"])  # the site is this machine: read it back
    assert landed.name == f"{unique}.bin" and landed.read_bytes() == data


def test_another_users_key_is_refused_before_any_run(people: dict[str, Person], alice_key: tuple[str, str],
                                                     airflow: AirflowClient) -> None:
    before = _airflow_run_count(airflow)
    resp = people["bob"].post("/pipelines/stage_in/runs", json={
        "ssh_key": alice_key[0], "source": "https://example.org/x", "target": "sftp://local/x"})
    assert resp.status_code == 404 and "no SSH key" in error_of(resp)["message"]
    outside = people["alice"].post("/pipelines/image_transfer/runs", json={
        "ssh_key": alice_key[0], "source": "file:x", "target": "sftp://local/x"})
    assert outside.status_code == 422 and "source" in error_of(outside)["message"]
    unknown = people["alice"].post("/pipelines/nope/runs", json={
        "ssh_key": alice_key[0], "source": "https://example.org/x", "target": "sftp://local/x"})
    assert unknown.status_code == 404
    assert _airflow_run_count(airflow) == before


def test_failed_run_leaves_no_secret_and_no_live_token(people: dict[str, Person], alice_key: tuple[str, str],
                                                       airflow: AirflowClient, stack: StackInfo,
                                                       vault_info: Any, unique: str) -> None:
    alice = people["alice"]
    assert stack.airflow is not None
    started = alice.post("/pipelines/stage_in/runs", json={
        "ssh_key": alice_key[0], "source": f"file:tests/missing-{unique}.bin", "target": f"sftp://local/{unique}"})
    assert started.status_code == 201, started.text
    done = _wait(alice, "stage_in", started.json()["id"])
    assert done["state"] == "failed"
    assert done["error"] and "does not exist" in done["error"]
    # The conf still holds the wrapping token; it must be spent.
    conf = airflow.get_run("stage_in", started.json()["id"])["conf"]
    token = conf["target"]["site"]["wrap_token"]
    assert not burn(conf["target"]["site"]["vault_addr"], token), "the run's token is still usable"
    # The private key is nowhere in Airflow's database, logs or home.
    import hvac

    secret = hvac.Client(url=vault_info.addr, token=vault_info.root_token()).secrets.kv.v2.read_secret_version(
        path=f"users/{alice.id}/ssh/{alice_key[0]}", mount_point=vault_info.mount, raise_on_deleted_version=True)
    body = [x for x in secret["data"]["data"]["private_key"].splitlines() if not x.startswith("-----")]
    needle = body[-2].encode()
    for path in [*Path(stack.airflow.home).rglob("*"), *Path(stack.airflow.home).parent.glob("*.log")]:
        if path.is_file():
            assert needle not in path.read_bytes(), f"private key material in {path}"
    assert stack.postgres is not None
    dump = subprocess.run(
        ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_dump", "-h",
         str(stack.stack_dir / "postgres" / "socket"), "-p", str(stack.postgres.port), "-d", "airflow", "-a"],
        capture_output=True, timeout=120)
    assert dump.returncode == 0, dump.stderr[-500:]
    assert needle not in dump.stdout
    assert b"BEGIN OPENSSH PRIVATE KEY" not in dump.stdout


def test_cancel_spends_the_token(people: dict[str, Person], alice_key: tuple[str, str], airflow: AirflowClient,
                                 unique: str) -> None:
    alice = people["alice"]
    started = alice.post("/pipelines/image_transfer/runs", json={
        "ssh_key": alice_key[0], "source": "http://192.0.2.1/never.sif", "target": f"sftp://local/{unique}.sif"})
    assert started.status_code == 201, started.text
    cancelled = alice.delete(f"/pipelines/image_transfer/runs/{started.json()['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "failed"
    conf = airflow.get_run("image_transfer", started.json()["id"])["conf"]
    assert not burn(conf["target"]["site"]["vault_addr"], conf["target"]["site"]["wrap_token"])


def test_internal_services_are_never_a_source(people: dict[str, Person], alice_key: tuple[str, str],
                                              airflow: AirflowClient, vault_info: Any, stack: StackInfo,
                                              settings: Settings) -> None:
    """A stage-in source on OpenBao, Airflow, the gateway or any internal address is a 422 when the
    request arrives: no run, no wrapped token."""
    assert stack.airflow is not None
    before = _airflow_run_count(airflow)
    for url in (f"{vault_info.addr}/v1/sys/health", f"{stack.airflow.url}/api/v2/version",
                f"{settings.public_url}/health", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/x"):
        resp = people["alice"].post("/pipelines/stage_in/runs", json={
            "ssh_key": alice_key[0], "source": url, "target": "sftp://local/ssrf"})
        assert resp.status_code == 422, (url, resp.text)
        assert "internal address" in error_of(resp)["message"] or "own services" in error_of(resp)["message"]
    assert _airflow_run_count(airflow) == before


def test_file_paths_are_the_callers_own_and_datasets_their_owners(
        people: dict[str, Person], alice_key: tuple[str, str], airflow: AirflowClient, stack: StackInfo,
        site: SiteInfo, unique: str) -> None:
    """Bob reaches alice's files neither by path (absolute, or escaping his folder), nor for
    writing, nor through a dataset of his own that points into her folder: each is a 4xx before
    any run."""
    alice, bob = people["alice"], people["bob"]
    assert stack.airflow is not None
    theirs = stack.airflow.storage_root / "users" / alice.id / "results" / f"secret-{unique}.bin"
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_bytes(b"alice's result")
    bob_key = bob.post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]
    before = _airflow_run_count(airflow)

    def stage(pipeline: str, source: str, target: str) -> Any:
        return bob.post(f"/pipelines/{pipeline}/runs", json={"ssh_key": bob_key, "source": source, "target": target})

    by_path = stage("stage_in", f"file://{theirs}", "sftp://local/stolen")
    assert by_path.status_code == 422 and "your own storage folder" in error_of(by_path)["message"]
    escaping = stage("stage_in", f"file:../{alice.id}/results/secret-{unique}.bin", "sftp://local/stolen")
    assert escaping.status_code == 422 and "leaves your own storage folder" in error_of(escaping)["message"]
    overwrite = stage("stage_out", "sftp://local/x", f"file://{theirs}")
    assert overwrite.status_code == 422 and error_of(overwrite)["details"]["field"] == "target"
    pointer = bob.post("/catalogue/datasets", json={"title": f"Not mine {unique}", "location": f"file://{theirs}",
                                                    "access": "public"})
    assert pointer.status_code == 201, pointer.text
    via_dataset = stage("stage_in", f"dataset:{pointer.json()['id']}", "sftp://local/stolen")
    assert via_dataset.status_code == 422, via_dataset.text
    assert "another user's storage folder" in error_of(via_dataset)["message"]
    assert _airflow_run_count(airflow) == before
    assert theirs.read_bytes() == b"alice's result"
