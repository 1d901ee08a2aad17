"""Workflows as a Service end to end, on the whole real stack: a developer registers and deploys the
wordcount example (real Apptainer image build, image moved to the site by an Airflow pipeline run);
a scientist registers a text dataset in the catalogue and invokes the workflow over REST and with
the CLI; the run stages the data in (Airflow), counts the words in the container as a Slurm job
under her own site account, stages the result out (Airflow) and registers it in the catalogue."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.main import create_app
from hpcwaas.cli import app as cli_app
from hpcwaas.settings import Settings, get_settings
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.fixtures.gateway import Person, fresh_database, registered_site, seed_people
from tests.fixtures.live import free_port, live_server

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]
EXAMPLES = Path(__file__).resolve().parents[2] / "tosca" / "examples"
TEXT = """It was the best of times, it was the worst of times, it was the age of wisdom,
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.
"""


def _wait(fetch: Any, done: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = fetch()
        if done(current):
            return dict(current)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {json.dumps(current)[:2000]}")
        time.sleep(1)


@pytest.fixture(scope="module")
def gateway(settings: Settings, stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[str, Settings]]:
    """A real gateway (HTTP: Airflow fetches the image from it) with its engine on, over a
    database of its own, so records other tests left pending do not queue ahead of these."""
    if "postgresql" in (settings.database_url or ""):
        pytest.skip("the whole-stack run happens once, on the SQLite gateway database")
    if stack.airflow is None or stack.apptainer is None:
        pytest.fail("the stack needs Airflow and the Apptainer builder: make stack-up", pytrace=False)
    port = free_port()
    with fresh_database("sqlite", stack, tmp_path_factory.mktemp("e2e-db")) as db_url:
        live = settings.model_copy(update={"database_url": db_url, "engine_in_gateway": True,
                                           "engine_poll_seconds": 0.3, "public_url": f"http://127.0.0.1:{port}"})
        with live_server(create_app(live), port) as url:
            yield url, live


@pytest.fixture(scope="module")
def people(gateway: tuple[str, Settings]) -> dict[str, Person]:
    """This module's users, in its own database, talking to the live gateway over HTTP."""
    http = httpx.Client(base_url=gateway[0], timeout=60)
    return seed_people(gateway[1].effective_database_url, http)  # type: ignore[arg-type]


def _as(person: Person, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {person.token}"}, timeout=60)


@pytest.fixture(scope="module")
def deployment(gateway: tuple[str, Settings], people: dict[str, Person], site: SiteInfo) -> Iterator[dict[str, Any]]:
    url, _ = gateway
    registered_site(people["admin"], site)
    dave = _as(people["dave"], url)
    name = f"wordcount-{uuid.uuid4().hex[:6]}"
    registered = dave.post("/workflows", json={"name": name, "source": {"kind": "folder",
                                                                          "path": str(EXAMPLES / "wordcount")}})
    assert registered.status_code in (200, 201), registered.text
    key = dave.post("/ssh_keys", json={"login": "sciuser2"}).json()
    authorize_key("sciuser2", key["public_key"])
    resp = dave.post("/deployments", json={"workflow": name, "site": "local", "ssh_key": key["id"]})
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    deployed = _wait(lambda: dave.get(location).json(), lambda d: d["state"] in ("deployed", "failed"), 900,
                     "the deployment (image build and transfer)")
    log_tail = "\n".join(line["text"] for line in dave.get(f"{location}/logs").json()["lines"][-25:])
    assert deployed["state"] == "deployed", f"{deployed['error']}\n{log_tail}"
    assert deployed["outputs"]["image_on_site"].endswith("/images/wordcount.sif")
    yield {"name": name, "deployment": deployed}
    revoke_key("sciuser2", key["public_key"])


@pytest.fixture(scope="module")
def dataset(gateway: tuple[str, Settings], people: dict[str, Person], stack: StackInfo) -> dict[str, Any]:
    url, _ = gateway
    assert stack.airflow is not None
    folder = stack.airflow.storage_root / "datasets" / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    path = folder / "two-cities.txt"
    path.write_text(TEXT)
    alice = _as(people["alice"], url)
    resp = alice.post("/catalogue/datasets", json={
        "title": "A Tale of Two Cities, opening", "description": "The first lines, for counting words.",
        "location": f"file://{path}", "format": "text/plain", "access": "public", "keywords": ["text", "demo"],
        "checksum_sha256": hashlib.sha256(TEXT.encode()).hexdigest(), "size_bytes": len(TEXT.encode())})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _expected_top(n: int) -> list[tuple[str, int]]:
    import re

    counts = Counter(w.lower() for w in re.findall(r"[^\W\d_]+", TEXT))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _check_result(execution: dict[str, Any], alice: httpx.Client, stack: StackInfo, top: int) -> None:
    outputs = execution["outputs"]
    result = alice.get(f"/catalogue/datasets/{outputs['result_dataset']}")
    assert result.status_code == 200, result.text
    entry = result.json()
    assert entry["checksum_sha256"] and entry["location"] == outputs["result_location"]
    assert stack.airflow is not None
    local = Path(outputs["result_location"].removeprefix("file://"))
    lines = [line for line in local.read_text().splitlines() if not line.startswith("#")]
    assert [tuple(line.split("\t")) for line in lines] == [(w, str(n)) for w, n in _expected_top(top)]
    assert hashlib.sha256(local.read_bytes()).hexdigest() == entry["checksum_sha256"]
    steps = {s["name"].split(":")[0]: s for s in execution["steps"]}
    assert any(s.get("job_id") for s in execution["steps"])
    assert sum(1 for s in execution["steps"] if s.get("pipeline_run_id")) == 2, steps
    assert entry["metadata"]["provenance"]["execution_id"] == execution["id"]
    _check_provenance(execution, alice, entry)


def _check_provenance(execution: dict[str, Any], alice: httpx.Client, result: dict[str, Any]) -> None:
    """The PROV record ties the scientist, the version, the image, the Slurm job and both datasets."""
    resp = alice.get(f"/executions/{execution['id']}/provenance")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    entities, activities = doc["entity"], doc["activity"]
    source = f"hpcwaas:dataset/{execution['inputs']['dataset']}"
    made = f"hpcwaas:dataset/{result['id']}"
    assert entities[made]["hpcwaas:sha256"] == result["checksum_sha256"]
    assert entities[source]["hpcwaas:sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert {"prov:generatedEntity": made, "prov:usedEntity": source} in doc["wasDerivedFrom"].values()
    assert any(name.startswith("hpcwaas:image/sha256:") for name in entities), entities
    assert any(name.startswith("hpcwaas:workflow/") and e["hpcwaas:digest"] for name, e in entities.items())
    jobs = {s["job_id"] for s in execution["steps"] if s.get("job_id")}
    assert {a.get("hpcwaas:slurm_job_id") for a in activities.values()} >= jobs
    run = activities[f"hpcwaas:execution/{execution['id']}"]
    assert run["hpcwaas:state"] == "completed" and "hpcwaas:user/alice" in doc["agent"]


def test_scientist_invokes_over_rest(gateway: tuple[str, Settings], deployment: dict[str, Any],
                                     dataset: dict[str, Any], people: dict[str, Person], stack: StackInfo) -> None:
    url, _ = gateway
    alice = _as(people["alice"], url)
    key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    try:
        resp = alice.post(f"/workflows/{deployment['name']}/executions",
                          json={"inputs": {"dataset": dataset["id"], "top": 5}, "ssh_key": key["id"]})
        assert resp.status_code == 202, resp.text
        location = resp.headers["Location"]
        execution = _wait(lambda: alice.get(location).json(),
                          lambda e: e["state"] in ("completed", "failed", "cancelled"), 600, "the execution")
        assert execution["state"] == "completed", (execution["error"], alice.get(f"{location}/logs").json())
        assert "counted" in execution["outputs"]["top_words"]
        _check_result(execution, alice, stack, 5)
    finally:
        revoke_key("sciuser1", key["public_key"])


def test_scientist_invokes_with_the_cli(gateway: tuple[str, Settings], deployment: dict[str, Any],
                                        dataset: dict[str, Any], people: dict[str, Person], stack: StackInfo,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, _ = gateway
    alice = _as(people["alice"], url)
    key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    monkeypatch.setenv("HPCWAAS_URL", url)
    monkeypatch.setenv("HPCWAAS_TOKEN", people["alice"].token)
    monkeypatch.setenv("HPCWAAS_CLI_CONFIG", str(tmp_path / "cli.json"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["run", deployment["name"], "--key", key["id"], "-i",
                                              f"dataset={dataset['id']}", "-i", "top=3", "--follow"])
        assert result.exit_code == 0, result.output
        assert "completed" in result.output and "result_dataset" in result.output
        listed = CliRunner().invoke(cli_app, ["--json", "executions", "list", "--workflow", deployment["name"]])
        newest = json.loads(listed.output)[0]
        _check_result(alice.get(f"/executions/{newest['id']}").json(), alice, stack, 3)
    finally:
        get_settings.cache_clear()
        revoke_key("sciuser1", key["public_key"])


def test_undeploy_removes_the_image_it_put_on_the_site(gateway: tuple[str, Settings], deployment: dict[str, Any],
                                                      people: dict[str, Person]) -> None:
    """Last in this module (it ends the shared deployment): the image deploy moved to the site is
    removed by undeploy, with the developer's account."""
    url, _ = gateway
    dave = _as(people["dave"], url)
    image = Path(deployment["deployment"]["outputs"]["image_on_site"])  # the site is this machine
    assert image.is_file()
    location = f"/deployments/{deployment['deployment']['id']}"
    assert dave.delete(location).status_code == 202
    final = _wait(lambda: dave.get(location).json(), lambda d: d["state"] in ("undeployed", "failed"), 300,
                  "the undeploy")
    assert final["state"] == "undeployed", final["error"]
    assert not image.exists(), f"{image} is still on the site"
