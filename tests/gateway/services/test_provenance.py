"""The PROV document of an execution, built from a persisted execution (no services needed)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from deployer.model import NodeInstance
from deployer.state import DeploymentRecord, OpRecord, RunRecord
from gateway.persistence.models import Execution, ExecutionState, WorkflowVersion
from gateway.services.provenance import build


def _execution() -> tuple[Execution, WorkflowVersion]:
    nodes = {
        "image": {"image_digest": "sha256:abc"},
        "stage_in": {"site_path": "/w/in", "pipeline_run_id": "r1", "sha256": "s1", "size": 10, "source_dataset": "d1"},
        "count": {"job_id": "42"},
        "stage_out": {"dataset_id": "d2", "sha256": "s2", "size": 5, "location": "file:///r", "pipeline_run_id": "r2"},
    }
    steps = ("stage_in", "count", "stage_out")
    record = DeploymentRecord(
        id="e1", template="t", nodes={n: NodeInstance(name=n, attributes=a) for n, a in nodes.items()},
        runs=[RunRecord(id="run", workflow="execute", steps={f"execute.{s}": "done" for s in steps},
                        ops={s: OpRecord(node=s, step=f"execute.{s}", status="done") for s in steps})])
    execution = Execution(
        id="e1", workflow_id="w1", deployment_id="dep1", owner_id="u1", login="sciuser1", workflow_name="w",
        tosca_workflow="execute",
        inputs={"dataset": "d1", "top": 5, "token": "hunter2"}, state=ExecutionState.COMPLETED,
        steps=[{"name": "stage_in", "state": "done", "started_at": 1.7e9, "finished_at": 1.7e9 + 3,
                "pipeline_run_id": "r1"},
               {"name": "count", "state": "done", "started_at": 1.7e9 + 3, "job_id": "42", "attempts": 1},
               {"name": "stage_out", "state": "done", "pipeline_run_id": "r2"}],
        record=record.model_dump(mode="json"), started_at=datetime(2026, 1, 1), finished_at=datetime(2026, 1, 1, 0, 1))
    version = WorkflowVersion(workflow_id="w1", number=2, digest="git:abc", workflows={"execute": {"inputs": {
        "dataset": {"catalogue_dataset": True}, "top": {}, "token": {"secret": True}}}},
        nodes=[{"name": n, "kind": {"count": "batch_job"}.get(n, n)} for n in nodes])
    return execution, version


def _document() -> dict[str, Any]:
    execution, version = _execution()
    return dict(json.loads(str(build(execution, version, "alice", "local").serialize(format="json"))))


def test_who_ran_which_version_and_image_on_which_site() -> None:
    doc = _document()
    run = doc["activity"]["hpcwaas:execution/e1"]
    assert run["hpcwaas:site"] == "local" and run["hpcwaas:state"] == "completed"
    assert run["prov:startTime"].startswith("2026-01-01T00:00:00")
    assert doc["entity"]["hpcwaas:workflow/w1/v2"]["hpcwaas:digest"] == "git:abc"
    assert {"prov:activity": "hpcwaas:execution/e1", "prov:agent": "hpcwaas:user/alice",
            "prov:plan": "hpcwaas:workflow/w1/v2"} in doc["wasAssociatedWith"].values()
    assert {"prov:activity": "hpcwaas:execution/e1", "prov:entity": "hpcwaas:image/sha256:abc"} in doc["used"].values()


def test_steps_carry_their_slurm_job_and_pipeline_run() -> None:
    activities = _document()["activity"]
    assert activities["hpcwaas:execution/e1/count"]["hpcwaas:slurm_job_id"] == "42"
    assert activities["hpcwaas:execution/e1/stage_in"]["hpcwaas:pipeline_run_id"] == "r1"


def test_the_result_derives_from_the_staged_in_dataset_with_their_checksums() -> None:
    doc = _document()
    assert doc["entity"]["hpcwaas:dataset/d1"]["hpcwaas:sha256"] == "s1"
    assert doc["entity"]["hpcwaas:dataset/d2"]["hpcwaas:sha256"] == "s2"
    assert {"prov:activity": "hpcwaas:execution/e1/stage_in", "prov:entity": "hpcwaas:dataset/d1"} \
        in doc["used"].values()
    assert {"prov:entity": "hpcwaas:dataset/d2", "prov:activity": "hpcwaas:execution/e1/stage_out"} \
        in doc["wasGeneratedBy"].values()
    assert {"prov:generatedEntity": "hpcwaas:dataset/d2", "prov:usedEntity": "hpcwaas:dataset/d1"} \
        in doc["wasDerivedFrom"].values()


def test_secret_inputs_are_left_out() -> None:
    text = json.dumps(_document())
    assert "hunter2" not in text and "input/token" not in text and "hpcwaas:input/dataset" in text


def test_an_execution_that_never_ran_has_just_its_request() -> None:
    execution, version = _execution()
    execution.record, execution.steps, execution.state = None, [], ExecutionState.PENDING
    execution.started_at = execution.finished_at = None
    doc = json.loads(str(build(execution, version, "alice", "local").serialize(format="json")))
    assert set(doc["activity"]) == {"hpcwaas:execution/e1"} and "wasGeneratedBy" not in doc


def _nodes(execution: Execution) -> dict[str, Any]:
    assert execution.record is not None
    return dict(execution.record["nodes"])


def test_an_unregistered_stage_out_is_not_taken_for_a_stage_in() -> None:
    execution, version = _execution()
    _nodes(execution)["stage_out"]["attributes"] = {"pipeline_run_id": "r2", "site_path": "/w/out", "sha256": "OUT"}
    doc = json.loads(str(build(execution, version, "alice", "local").serialize(format="json")))
    assert doc["entity"]["hpcwaas:dataset/d1"]["hpcwaas:sha256"] == "s1"
    assert "OUT" not in json.dumps(doc) and "wasDerivedFrom" not in doc


def test_a_stage_in_from_a_url_stamps_no_catalogue_dataset() -> None:
    execution, version = _execution()
    _nodes(execution)["stage_in"]["attributes"].update(source_dataset=None, sha256="URLSUM")
    doc = json.loads(str(build(execution, version, "alice", "local").serialize(format="json")))
    assert "URLSUM" not in json.dumps(doc)
    assert {"prov:activity": "hpcwaas:execution/e1", "prov:entity": "hpcwaas:dataset/d1"} in doc["used"].values()


def test_free_text_in_names_is_quoted() -> None:
    execution, version = _execution()
    execution.inputs["dataset"] = 'my "data" <set>'
    _nodes(execution)["stage_in"]["attributes"]["source_dataset"] = 'my "data" <set>'
    execution.steps[0]["name"] = "stage in"
    doc = json.loads(str(build(execution, version, "alice", "local").serialize(format="json")))
    assert "hpcwaas:dataset/my%20%22data%22%20%3Cset%3E" in doc["entity"]
    assert "hpcwaas:execution/e1/stage%20in" in doc["activity"]
