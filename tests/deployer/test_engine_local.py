"""Deploy, run a workflow and undeploy on localhost with real Ansible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer import api
from deployer.engine import Event
from deployer.errors import OperationError, StateError
from deployer.model import NodeState
from deployer.plan import deploy_plan, render, undeploy_plan
from tests.deployer.conftest import HEADER, write
from tosca import EXAMPLES_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("unsandboxed")]


def test_hello_local_deploy_run_undeploy(tmp_path: Path) -> None:
    base = tmp_path / "inst"
    state = tmp_path / "state"
    events: list[Event] = []
    engine = api.deploy(EXAMPLES_DIR / "hello-local", state, inputs={"base_dir": str(base)}, on_event=events.append)
    assert engine.ops_run == 3
    record = api.load_record(state)
    assert record.status == "deployed"
    assert {n.state for n in record.nodes.values()} == {NodeState.STARTED}
    # relationship operation ran on the source with TARGET's attribute
    assert (base / "app.uses").resolve() == base / "lib" / "greeting.txt"
    # the order of operations follows the requirements
    starts = [e.node for e in events if e.kind == "op_start"]
    assert starts.index("lib") < starts.index("app")

    api.run_workflow(state, "execute", workflow_inputs={"who": "ada"})
    assert (base / "app" / "said.txt").read_text() == "hello ada\n"
    outs = api.outputs(state)
    assert outs == {"lib_path": str(base / "lib" / "greeting.txt"), "app_path": str(base / "app" / "greeting.txt"),
                    "said": "hello ada"}

    api.undeploy(state)
    record = api.load_record(state)
    assert record.status == "undeployed"
    assert {n.state for n in record.nodes.values()} == {NodeState.DELETED}
    assert not (base / "lib").exists() and not (base / "app").exists()


def test_redeploy_is_a_no_op(marker_project, tmp_path: Path) -> None:
    tpl, marker = marker_project(n_chain=2)
    api.deploy(tpl, tmp_path / "st")
    engine = api.deploy(tpl, tmp_path / "st")
    assert engine.ops_run == 0
    assert marker.read_text().split() == ["c0", "c1"]


def test_failure_names_node_operation_and_task(tmp_path: Path) -> None:
    tpl = write(tmp_path / "p", {
        "s.yaml": HEADER + """
topology_template:
  node_templates:
    broken:
      type: tosca.nodes.Root
      interfaces:
        Standard:
          configure: fail.yml
""",
        "fail.yml": """
- hosts: all
  gather_facts: false
  tasks:
    - name: This task fails on purpose
      ansible.builtin.fail: {msg: "the disk is full"}
""",
    })
    with pytest.raises(OperationError) as info:
        api.deploy(tpl, tmp_path / "st")
    err = info.value
    assert (err.node, err.interface, err.operation, err.task) == ("broken", "Standard", "configure",
                                                                   "This task fails on purpose")
    assert "the disk is full" in str(err)
    record = api.load_record(tmp_path / "st")
    assert record.nodes["broken"].state == NodeState.ERROR
    assert record.status == "failed"
    assert record.runs[-1].ops["broken:Standard.configure"].status == "failed"


def test_interrupted_run_requires_resume(marker_project, tmp_path: Path) -> None:
    tpl, _ = marker_project(n_chain=1)
    state = tmp_path / "st"
    api.deploy(tpl, state)
    data = json.loads((state / "state.json").read_text())
    data["runs"][-1]["status"] = "running"  # as if the deployer had died
    (state / "state.json").write_text(json.dumps(data))
    with pytest.raises(StateError, match="--resume"):
        api.deploy(tpl, state)
    api.deploy(tpl, state, resume=True)


def test_secret_inputs_never_reach_state(tmp_path: Path) -> None:
    secret = "s3cr3t-VALUE-xyz"
    tpl = write(tmp_path / "p", {
        "s.yaml": HEADER + """
topology_template:
  inputs:
    token: {type: string, metadata: {hpcwaas.secret: true}}
    plain: {type: string, default: visible}
  node_templates:
    n:
      type: tosca.nodes.Root
      interfaces:
        Standard:
          create:
            implementation: echo.yml
            inputs: {token: {get_input: token}}
""",
        "echo.yml": """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.debug: {msg: "token is {{ token }}"}
""",
    })
    lines: list[str] = []
    api.deploy(tpl, tmp_path / "st", inputs={"token": secret}, on_event=lambda e: lines.append(e.message))
    text = (tmp_path / "st" / "state.json").read_text()
    assert secret not in text
    assert "visible" in text
    assert not any(secret in line for line in lines)  # masked in streamed output too
    assert any("token is ***" in line for line in lines)


def test_plan_orders_lifecycle_and_waves(marker_project) -> None:
    tpl, _ = marker_project(n_chain=3, n_free=2)
    topo = api.validate_template(tpl)
    plan = deploy_plan(topo)
    assert plan.waves == [["here"], ["c0", "f0", "f1"], ["c1"], ["c2"]]
    assert plan.op_count == 5
    assert undeploy_plan(topo).waves[0] == ["c2", "f0", "f1"]
    assert any("c1: Standard.create" in line for line in render(plan))


def test_parallel_workers(marker_project, tmp_path: Path) -> None:
    tpl, marker = marker_project(n_chain=0, n_free=4)
    engine = api.deploy(tpl, tmp_path / "st", workers=4)
    assert sorted(marker.read_text().split()) == ["f0", "f1", "f2", "f3"]
    assert engine.ops_run == 4
