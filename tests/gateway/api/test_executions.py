"""Invoking workflows: request checks and permissions (the engine is off in these tests)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.core.db import make_engine, make_session_factory
from gateway.persistence.models import Deployment, DeploymentState
from hpcwaas.settings import Settings
from hpcwaas.stack.info import SiteInfo
from tests.fixtures.gateway import Person, error_of, registered_site

EXAMPLES = Path(__file__).resolve().parents[3] / "tosca" / "examples"


@pytest.fixture
def deployed(people: dict[str, Person], settings: Settings, site: SiteInfo) -> dict[str, Any]:
    """A registered hello-local workflow with a deployment marked deployed (no engine involved)."""
    return _deployed(people, settings, site)


# The execute workflow's inputs, with TOSCA constraints and an input the engine provides.
CONSTRAINED = """who: {type: string, default: world, constraints: [{min_length: 2}, {pattern: '[a-z]+'}]}
        times: {type: integer, default: 1, constraints: [{in_range: [1, 5]}]}
        tone: {type: string, default: calm, constraints: [{valid_values: [calm, loud]}]}
        run_id: {type: string, required: false, metadata: {hpcwaas.provided: run_id}}"""


def _deployed(people: dict[str, Person], settings: Settings, site: SiteInfo,
              execute_inputs: str | None = None, example: Path = EXAMPLES / "hello-local") -> dict[str, Any]:
    registered_site(people["admin"], site)
    name = f"inv-{uuid.uuid4().hex[:8]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(example, folder)
    if execute_inputs is not None:
        service = folder / "service.yaml"
        text = service.read_text()
        assert "who: {type: string, default: world}" in text
        service.write_text(text.replace("who: {type: string, default: world}", execute_inputs, 1))
    version = people["dave"].post("/workflows", json={
        "name": name, "source": {"kind": "folder", "path": str(folder)},
        "visibility": {"mode": "restricted", "users": ["alice"]}}).json()["version"]
    key = people["dave"].post("/ssh_keys", json={"login": "sciuser2"}).json()
    engine = make_engine(settings.effective_database_url)
    with make_session_factory(engine)() as db:
        site_id = people["admin"].get("/sites/local").json()["id"]
        deployment = Deployment(workflow_id=version_workflow_id(people, name), version_id=version["id"],
                                site_id=site_id, owner_id=people["dave"].id, ssh_key_id=key["id"], login="sciuser2",
                                inputs={"base_dir": "/tmp/x"}, state=DeploymentState.DEPLOYED, target="deployed")
        db.add(deployment)
        db.commit()
        deployment_id = deployment.id
    engine.dispose()
    alice_key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    return {"name": name, "deployment": deployment_id, "alice_key": alice_key["id"]}


def version_workflow_id(people: dict[str, Person], name: str) -> str:
    return str(people["dave"].get(f"/workflows/{name}").json()["id"])


def test_invoke_answers_202_with_location(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    resp = people["alice"].post(f"/workflows/{deployed['name']}/executions",
                                json={"inputs": {"who": "ada"}, "ssh_key": deployed["alice_key"]})
    assert resp.status_code == 202, resp.text
    execution = resp.json()
    assert resp.headers["Location"] == f"/executions/{execution['id']}"
    assert execution["state"] == "pending" and execution["deployment_id"] == deployed["deployment"]
    assert execution["login"] == "sciuser1"
    # It says which workflow it ran (not the TOSCA workflow's name), fast path and full path alike.
    assert (execution["workflow_name"], execution["tosca_workflow"]) == (deployed["name"], "execute")
    shown = people["alice"].get(resp.headers["Location"])
    assert shown.status_code == 200 and shown.json()["inputs"] == {"who": "ada"}
    assert shown.json()["workflow_name"] == deployed["name"]
    by_site = people["alice"].post(f"/workflows/{deployed['name']}/executions",
                                   json={"inputs": {"who": "ada"}, "ssh_key": deployed["alice_key"],
                                         "deployment": deployed["deployment"], "tosca_workflow": "execute"})
    assert by_site.status_code == 202 and by_site.json()["workflow_name"] == deployed["name"], by_site.text


def test_inputs_are_checked_before_anything_runs(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    alice = people["alice"]
    url = f"/workflows/{deployed['name']}/executions"
    before = len(alice.get("/executions").json())
    # Seen: a NUL in a name reached the stage-in and the job, and only the stage-out failed.
    for value, said in [("a\x00b", "inputs.who contains the control character U+0000"),
                        (["ok", "\x1b[31m"], "inputs.who[1] contains the control character U+001B"),
                        ("x" * 2_000_000, "more than this gateway takes")]:
        refused = alice.post(url, json={"inputs": {"who": value}, "ssh_key": deployed["alice_key"]})
        assert refused.status_code == 422 and said in error_of(refused)["message"], refused.text[:500]
        assert "x" * 100 not in refused.text  # a refused value is not echoed back
    assert len(alice.get("/executions").json()) == before  # nothing was stored
    unknown = alice.post(url, json={"inputs": {"whom": "ada"}, "ssh_key": deployed["alice_key"]})
    assert unknown.status_code == 422
    assert error_of(unknown)["details"]["field"] == "inputs.whom" and "who" in error_of(unknown)["hint"]
    wrong_type = alice.post(url, json={"inputs": {"who": 42}, "ssh_key": deployed["alice_key"]})
    assert wrong_type.status_code == 422 and "must be a string" in error_of(wrong_type)["message"]
    no_workflow = alice.post(url, json={"ssh_key": deployed["alice_key"], "tosca_workflow": "nope"})
    assert no_workflow.status_code == 422 and "nope" in error_of(no_workflow)["message"]
    assert alice.get("/executions", params={"workflow": deployed["name"]}).json() == []


def test_declared_constraints_and_engine_inputs_are_enforced(people: dict[str, Person], settings: Settings,
                                                             site: SiteInfo) -> None:
    deployed = _deployed(people, settings, site, CONSTRAINED)
    alice = people["alice"]
    url = f"/workflows/{deployed['name']}/executions"

    def refused(inputs: dict[str, Any]) -> dict[str, Any]:
        resp = alice.post(url, json={"inputs": inputs, "ssh_key": deployed["alice_key"]})
        assert resp.status_code == 422, resp.text
        return error_of(resp)

    shown = people["alice"].get(f"/workflows/{deployed['name']}").json()
    declared = shown["latest"]["workflows"]["execute"]["inputs"]
    assert declared["times"]["constraints"] == [{"in_range": [1, 5]}] and declared["run_id"]["provided"] == "run_id"
    for inputs, words in (({"times": 0}, "between 1 and 5"), ({"times": 99999999999999999999}, "between 1 and 5"),
                          ({"who": "a"}, "at least 2 characters"), ({"who": "Ada!"}, "pattern"),
                          ({"tone": "angry"}, "one of 'calm', 'loud'")):
        error = refused(inputs)
        name = next(iter(inputs))
        assert words in error["message"] and error["details"]["field"] == f"inputs.{name}", error
    error = refused({"run_id": "../../etc"})
    assert "set by the engine" in error["message"] and error["details"]["field"] == "inputs.run_id"
    wrong = refused({"who": 123})
    assert "must be a string, not an int" in wrong["message"] and "who=\"123\"" in wrong["hint"]
    ok = alice.post(url, json={"inputs": {"who": "ada", "times": 5, "tone": "loud"}, "ssh_key": deployed["alice_key"]})
    assert ok.status_code == 202, ok.text
    assert alice.get("/executions", params={"workflow": deployed["name"]}).json()[0]["id"] == ok.json()["id"]


def test_a_constraint_the_deployer_cannot_check_is_refused_at_registration(
        people: dict[str, Person], settings: Settings) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(EXAMPLES / "hello-local", folder)
    service = folder / "service.yaml"
    service.write_text(service.read_text().replace(
        "who: {type: string, default: world}", "who: {type: string, default: world, constraints: [{shorter: 3}]}", 1))
    resp = people["dave"].post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(folder)}})
    assert resp.status_code == 422, resp.text
    body = resp.text
    assert "unknown constraint 'shorter'" in body and "service.yaml" in body


def test_only_your_own_key(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    bob_key = people["bob"].post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]
    resp = people["alice"].post(f"/workflows/{deployed['name']}/executions", json={"ssh_key": bob_key})
    assert resp.status_code == 404 and "SSH key" in error_of(resp)["message"]


def test_visibility_is_enforced_on_invoke(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    bob_key = people["bob"].post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]
    resp = people["bob"].post(f"/workflows/{deployed['name']}/executions", json={"ssh_key": bob_key})
    assert resp.status_code == 404


def test_owner_or_admin_only_see_and_cancel(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    alice = people["alice"]
    execution = alice.post(f"/workflows/{deployed['name']}/executions",
                           json={"ssh_key": deployed["alice_key"]}).json()
    url = f"/executions/{execution['id']}"
    for other in ("bob", "dave"):
        assert people[other].get(url).status_code == 404
        assert people[other].delete(url).status_code == 404
        assert people[other].get(f"{url}/logs").status_code == 404
        assert execution["id"] not in [e["id"] for e in people[other].get("/executions").json()]
    assert people["admin"].get(url).status_code == 200
    assert execution["id"] in [e["id"] for e in people["admin"].get("/executions", params={"all": True}).json()]
    cancelled = alice.delete(url)
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    assert alice.delete(url).json()["state"] == "cancelled"  # idempotent
    assert alice.http.get(url).status_code == 401  # no token at all


def test_no_deployment_ready_is_409(people: dict[str, Person], settings: Settings, unique: str) -> None:
    folder = settings.registry_roots[0] / f"undeployed-{unique}"
    shutil.copytree(EXAMPLES / "hello-local", folder)
    people["dave"].post("/workflows", json={"name": f"undeployed-{unique}",
                                            "source": {"kind": "folder", "path": str(folder)}})
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()["id"]
    resp = people["alice"].post(f"/workflows/undeployed-{unique}/executions", json={"ssh_key": key})
    assert resp.status_code == 409 and "no deployment" in error_of(resp)["message"]


def test_deploy_request_checks(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    dave_key = people["dave"].post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]
    body = {"workflow": deployed["name"], "site": "local", "ssh_key": dave_key, "inputs": {}}
    missing = people["dave"].post("/deployments", json=body)
    assert missing.status_code == 422 and error_of(missing)["details"]["field"] == "inputs.base_dir"
    reserved_body = {**body, "inputs": {"base_dir": "/tmp/y"}}
    assert people["alice"].post("/deployments", json=reserved_body).status_code == 403
    accepted = people["dave"].post("/deployments", json=reserved_body)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Location"].startswith("/deployments/")
    assert accepted.json()["state"] == "pending"
    assert people["bob"].get(accepted.headers["Location"]).status_code == 404
    assert people["alice"].get(accepted.headers["Location"]).status_code == 200
    assert people["alice"].delete(accepted.headers["Location"]).status_code == 403


def test_logs_long_poll_returns_promptly_when_finished(people: dict[str, Person], deployed: dict[str, Any]) -> None:
    alice = people["alice"]
    execution = alice.post(f"/workflows/{deployed['name']}/executions", json={"ssh_key": deployed["alice_key"]})
    url = execution.headers["Location"]
    alice.delete(url)
    page = alice.get(f"{url}/logs", params={"wait": 5})
    assert page.status_code == 200 and page.json()["finished"] is True
    with alice.http.stream("GET", f"{url}/logs/stream",
                           headers={"Authorization": f"Bearer {alice.token}"}) as stream:
        body = "".join(stream.iter_text())
    assert "event: end" in body


def test_a_secret_input_value_is_refused_and_never_echoed() -> None:
    """Secret values are not taken in a request (they would be stored with it), nor shown back."""
    from gateway.errors import InvalidInput
    from gateway.services.runs import check_inputs

    declared = {"code": {"type": "string", "secret": True, "constraints": [{"min_length": 12}]}}
    for value in ("s3cr3t", 4242, "a-long-enough-s3cr3t"):
        with pytest.raises(InvalidInput) as err:
            check_inputs(declared, {"code": value}, "w/execute")
        text = f"{err.value.message} {err.value.hint}"
        assert "is secret" in text and err.value.context["field"] == "inputs.code"
        assert str(value) not in text, text
    assert check_inputs(declared, {}, "w/execute") == {}


STAGED = Path(__file__).resolve().parents[1] / "engine" / "fixtures" / "staged-job"


def test_a_staged_dataset_input_must_be_a_readable_located_catalogue_dataset(
        people: dict[str, Person], settings: Settings, site: SiteInfo) -> None:
    """A dataset id a stage-in step takes from an input is checked at invoke, not at stage-in."""
    deployed = _deployed(people, settings, site, example=STAGED)
    alice, bob = people["alice"], people["bob"]
    shown = alice.get(f"/workflows/{deployed['name']}").json()
    assert shown["latest"]["workflows"]["execute"]["inputs"]["dataset"]["catalogue_dataset"] is True

    def dataset(owner: Person, **fields: Any) -> str:
        resp = owner.post("/catalogue/datasets", json={"title": f"words {uuid.uuid4().hex[:6]}", **fields})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    located = {"location": "sftp://local/data/words.txt"}
    mine, public = dataset(alice, **located), dataset(bob, access="public", **located)
    bobs_private, unlocated = dataset(bob, **located), dataset(alice)
    # A dataset of hers whose file location lies in bob's storage folder: stage-in would refuse it.
    into_bobs = dataset(alice, location=f"file://{settings.pipelines_storage_root}/users/{bob.id}/results/x.txt")

    def invoke(value: str, **extra: Any) -> Any:
        return alice.post(f"/workflows/{deployed['name']}/executions",
                          json={"inputs": {"dataset": value}, "ssh_key": deployed["alice_key"], **extra})

    # Both the one-query path and the full one (taken when a deployment is chosen) check.
    for extra in ({}, {"deployment": deployed["deployment"]}):
        for value in (mine, public, f"dataset:{mine}", "https://example.org/words.txt"):
            assert invoke(value, **extra).status_code == 202, value
        for value, says in ((bobs_private, "names no catalogue dataset you can read"),
                            ("no-such-dataset", "names no catalogue dataset you can read"),
                            (unlocated, "has no location to stage it from"),
                            (into_bobs, "points into another user's storage folder")):
            resp = invoke(value, **extra)
            assert resp.status_code == 422, resp.text
            error = error_of(resp)
            assert error["details"]["field"] == "inputs.dataset" and says in error["message"], error
    listed = alice.get("/executions", params={"workflow": deployed["name"]}).json()
    assert len(listed) == 8  # only the accepted ones were written


def test_executions_in_flight_are_limited_per_user(people: dict[str, Person], deployed: dict[str, Any],
                                                   settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from gateway.main import create_app

    alice = people["alice"]
    running = [e for e in alice.get("/executions", params={"limit": 500}).json()
               if e["state"] not in ("completed", "failed", "cancelled")]
    limited = settings.model_copy(update={"max_executions_in_flight": len(running) + 2})
    url = f"/workflows/{deployed['name']}/executions"
    body = {"inputs": {"who": "ada"}, "ssh_key": deployed["alice_key"]}
    with TestClient(create_app(limited), headers={"Authorization": f"Bearer {alice.token}"}) as http:
        first, second, third = (http.post(url, json=body) for _ in range(3))
        assert (first.status_code, second.status_code) == (202, 202), first.text
        assert third.status_code == 429 and error_of(third)["code"] == "quota_exceeded", third.text
        assert f"at most {len(running) + 2} at once" in error_of(third)["message"]
        assert http.delete(f"/executions/{first.json()['id']}").status_code == 202
        assert http.post(url, json=body).status_code == 202  # room again
