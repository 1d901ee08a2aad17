"""Non-blocking runs, resume and cancel with the reference suspendable executor (no services)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployer.engine import Engine, Event
from deployer.errors import DeployerError, OperationError, StateError
from deployer.executors import (
    IMAGE_TRANSFER,
    STAGE_IN,
    ExecutorRegistry,
    OperationRequest,
    is_suspendable,
    registry,
)
from deployer.loader import open_package
from deployer.model import NodeState, OperationDef
from deployer.state import DeploymentRecord, FolderStateStore, MemoryStateStore, RunRecord, StateStore
from deployer.validate import load_topology
from tests.deployer.conftest import HEADER, write
from tests.deployer.fakes import CountingBlockingExecutor, FakeService, FakeSuspendableExecutor, FreezingStore

SVC = "implementation: {primary: {file: svc, type: hpcwaas.artifacts.Implementation.StageIn}}"
QUICK = "{implementation: {primary: {file: q, type: hpcwaas.artifacts.Implementation.ImageTransfer}}}"

TYPES = f"""
node_types:
  test.Wait:
    derived_from: tosca.nodes.Root
    properties:
      polls: {{type: integer, default: 2}}
      after: {{type: float, default: 0.0}}
      fail: {{type: boolean, default: false}}
    attributes: {{result: {{type: string}}, run_id: {{type: string}}}}
    interfaces:
      Standard:
        create:
          {SVC}
          inputs:
            polls: {{get_property: [SELF, polls]}}
            after: {{get_property: [SELF, after]}}
            fail: {{get_property: [SELF, fail]}}
  test.Step:
    derived_from: tosca.nodes.Root
    properties:
      polls: {{type: integer, default: 2}}
      after: {{type: float, default: 0.0}}
      fail: {{type: boolean, default: false}}
    attributes: {{result: {{type: string}}, run_id: {{type: string}}}}
    interfaces:
      Job:
        type: hpcwaas.interfaces.Job
        operations:
          run:
            {SVC}
            inputs:
              polls: {{get_property: [SELF, polls]}}
              after: {{get_property: [SELF, after]}}
              fail: {{get_property: [SELF, fail]}}
              result: none
  test.Quick:
    derived_from: tosca.nodes.Root
    attributes: {{made: {{type: string}}}}
    interfaces:
      Standard:
        create: {QUICK}
"""

DEPLOY_TEMPLATE = HEADER + TYPES + """
topology_template:
  node_templates:
    w1: {type: test.Wait}
    w2: {type: test.Wait, properties: {polls: 3}}
    after_w1: {type: test.Wait, requirements: [{dependency: w1}]}
    q1: {type: test.Quick}
    q2: {type: test.Quick, requirements: [{dependency: q1}]}
  outputs:
    final: {value: {get_attribute: [after_w1, result]}}
"""

WORKFLOW_TEMPLATE = HEADER + TYPES + """
topology_template:
  node_templates:
    stage_in: {type: test.Step}
    job: {type: test.Step, properties: {polls: 3}}
    stage_out: {type: test.Step}
    side: {type: test.Step, properties: {polls: 1}}
  workflows:
    execute:
      inputs:
        dataset: {type: string}
      steps:
        stage_in:
          target: stage_in
          activities:
            - call_operation: {operation: Job.run, inputs: {result: {get_input: dataset}}}
          on_success: [job]
        job:
          target: job
          activities:
            - set_state: starting
            - call_operation: Job.run
            - set_state: started
          on_success: [stage_out]
        stage_out:
          target: stage_out
          activities: [{call_operation: Job.run}]
        side:
          target: side
          activities: [{call_operation: Job.run}]
  outputs:
    staged: {value: {get_attribute: [stage_in, result]}}
    out_run: {value: {get_attribute: [stage_out, run_id]}}
"""


class World:
    """A project folder, the fake service, executors registered on a private registry."""

    def __init__(self, tmp_path: Path, template: str, *, delay: float = 0.0, on_trigger: Any = None) -> None:
        self.tpl = write(tmp_path / "proj", {"service.yaml": template})
        self.service = FakeService()
        self.suspendable = FakeSuspendableExecutor(self.service, delay=delay, on_trigger=on_trigger)
        self.blocking = CountingBlockingExecutor()
        self.executors: ExecutorRegistry = registry.copy()
        self.executors.register(STAGE_IN, self.suspendable)
        self.executors.register(IMAGE_TRANSFER, self.blocking)
        self.events: list[Event] = []

    def engine(self, store: StateStore, *, deployment_id: str = "dep", workers: int = 4, **kw: Any) -> Engine:
        """A fresh Engine over ``store``: what each gateway worker call builds."""
        with open_package(self.tpl) as package:
            topology, inputs = load_topology(package)
        return Engine(topology, store, deployment_id=deployment_id, inputs=inputs, workers=workers,
                      executors=self.executors, on_event=self.events.append, **kw)


def drive(call: Callable[[], RunRecord], *, limit: int = 50) -> list[RunRecord]:
    """Call until the run is no longer waiting (as a worker loop would, honouring wake_at)."""
    seen = []
    for _ in range(limit):
        run = call()
        seen.append(run.model_copy(deep=True))
        if run.status != "waiting":
            return seen
        assert run.wake_at is not None
        time.sleep(max(0.0, run.wake_at - time.time()))
    raise AssertionError("the run never ended")


def test_nonblocking_deploy_waits_resumes_and_finishes(tmp_path: Path) -> None:
    world = World(tmp_path, DEPLOY_TEMPLATE)
    store = FolderStateStore(tmp_path / "state")

    first = world.engine(store).deploy(blocking=False)
    assert first.status == "waiting" and first.wake_at is not None
    # w1 and w2 started (side effect once each), after_w1 waits for w1; q1 -> q2 ran to the end
    assert sorted(world.service.started_nodes()) == ["w1", "w2"]
    assert sorted(world.blocking.calls) == ["q1:Standard.create", "q2:Standard.create"]
    ops = first.ops
    assert ops["w1:Standard.create"].status == "waiting" and ops["w1:Standard.create"].memo["run_id"]
    assert ops["q2:Standard.create"].status == "done"
    assert "after_w1:Standard.create" not in ops
    assert first.steps["w1"] == "waiting" and first.steps["q2"] == "done"
    saved = store.load()
    assert saved is not None and saved.status == "deploying" and saved.runs[-1].status == "waiting"
    assert saved.nodes["w1"].attributes["run_id"] == ops["w1:Standard.create"].memo["run_id"]  # known while waiting

    # a fresh engine per call, as separate worker processes do
    calls = drive(lambda: world.engine(store).deploy(resume=True, blocking=False))
    final = calls[-1]
    assert final.status == "done" and final.wake_at is None
    assert len(final.ops) == 5 and all(op.status == "done" for op in final.ops.values())
    assert all(op.attempts == 1 for op in final.ops.values())  # polls are not attempts
    assert final.ops["w2:Standard.create"].polls == 3
    # every operation started exactly once across all calls; the dependant only after w1 ended
    assert sorted(world.service.triggers) == sorted(set(world.service.triggers))
    assert sorted(world.service.started_nodes()) == ["after_w1", "w1", "w2"]
    assert world.blocking.calls.count("q1:Standard.create") == 1
    record = store.load()
    assert record is not None and record.status == "deployed" and len(record.runs) == 1
    assert {n.state for n in record.nodes.values()} == {NodeState.STARTED}
    assert record.runs[-1].calls == len(calls) + 1
    assert world.engine(store).outputs() == {"final": "after_w1-done"}


def test_waiting_op_not_polled_before_its_time(tmp_path: Path) -> None:
    world = World(tmp_path, HEADER + TYPES + """
topology_template:
  node_templates:
    slow: {type: test.Wait, properties: {after: 30.0}}
""")
    store = MemoryStateStore()
    run = world.engine(store).deploy(blocking=False)
    assert run.status == "waiting" and run.wake_at is not None and 25 < run.wake_at - time.time() <= 30
    again = world.engine(store).deploy(resume=True, blocking=False)
    assert again.status == "waiting" and again.wake_at == pytest.approx(run.wake_at)
    assert world.service.polls == []  # no connection made before wake_at
    assert len(world.service.triggers) == 1


def test_independent_ops_run_in_parallel_within_one_call(tmp_path: Path) -> None:
    nodes = "\n".join(f"    w{i}: {{type: test.Wait}}" for i in range(6))
    world = World(tmp_path, HEADER + TYPES + "topology_template:\n  node_templates:\n" + nodes + "\n", delay=0.3)
    store = MemoryStateStore()
    started = time.perf_counter()
    run = world.engine(store, workers=3).deploy(blocking=False)
    elapsed = time.perf_counter() - started
    assert run.status == "waiting" and len(world.service.triggers) == 6
    assert world.service.max_active == 3  # the worker limit holds
    assert elapsed < 6 * 0.3  # and they overlapped
    drive(lambda: world.engine(store, workers=3).deploy(resume=True, blocking=False))
    assert len(world.service.triggers) == 6


def test_blocking_mode_drives_a_suspendable_executor(tmp_path: Path) -> None:
    world = World(tmp_path, DEPLOY_TEMPLATE)
    store = MemoryStateStore()
    run = world.engine(store).deploy()
    assert run.status == "done"
    assert sorted(world.service.started_nodes()) == ["after_w1", "w1", "w2"]
    assert any(e.kind == "op_wait" for e in world.events)


def test_nonblocking_workflow_steps_outputs_and_memo(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    store = MemoryStateStore()
    first = world.engine(store).run_workflow("execute", {"dataset": "ds-42"}, blocking=False, run_id="exec-1")
    assert first.id == "exec-1" and first.status == "waiting"
    assert first.steps == {"execute.stage_in": "waiting", "execute.side": "waiting"}
    # resume with no inputs: the run's recorded inputs are used again
    calls = drive(lambda: world.engine(store).run_workflow("execute", resume=True, blocking=False))
    run = calls[-1]
    assert run.status == "done"
    assert run.steps == {f"execute.{s}": "done" for s in ("stage_in", "job", "stage_out", "side")}
    assert [world.service.runs[world.service.by_tag[t]].node for t in world.service.triggers].count("job") == 1
    # what the gateway shows per step: status, times, attempts, memo (run id), outputs
    job_ops = run.ops_of_step("execute.job")
    assert len(job_ops) == 1
    (key, op), = job_ops.items()
    assert key.startswith("execute.job#1:job:Job.run")
    assert op.node == "job" and op.operation == "Job.run" and op.attempts == 1 and op.polls == 3
    assert op.memo["run_id"].startswith("run-") and op.outputs["run_id"] == op.memo["run_id"]
    assert op.started_at <= (op.finished_at or 0)
    record = store.load()
    assert record is not None and record.nodes["job"].state == NodeState.STARTED
    outs = world.engine(store).outputs()
    assert outs["staged"] == "ds-42" and outs["out_run"] == run.ops_of_step("execute.stage_out").popitem()[1].memo[
        "run_id"]
    # the request carried what a service executor needs
    request = world.service.runs[world.service.by_tag[world.service.triggers[0]]].request
    assert request is not None and request.run_id == "exec-1" and request.deployment_id == "dep"
    assert request.tag.startswith("hpcwaas:dep:exec-1:") and request.properties["polls"] in (1, 2)
    assert request.step in ("execute.stage_in", "execute.side") and request.attempt == 1


def test_failure_is_recorded_not_retried_and_waits_for_the_other_branch(tmp_path: Path) -> None:
    world = World(tmp_path, HEADER + TYPES + """
topology_template:
  node_templates:
    bad: {type: test.Step, properties: {polls: 1, fail: true}}
    long: {type: test.Step, properties: {polls: 4}}
  workflows:
    execute:
      steps:
        bad: {target: bad, activities: [{call_operation: Job.run}]}
        long: {target: long, activities: [{call_operation: Job.run}]}
""")
    store = MemoryStateStore()
    calls = drive(lambda: world.engine(store).run_workflow("execute", resume=bool(store.load()), blocking=False))
    run = calls[-1]
    # non-blocking calls return the failed run instead of raising
    assert run.status == "failed" and "boom" in (run.error or "")
    assert run.steps == {"execute.bad": "failed", "execute.long": "done"}
    assert world.service.started_nodes().count("bad") == 1  # the failure was not retried by later calls
    bad = run.ops_of_step("execute.bad").popitem()[1]
    assert bad.status == "failed" and "boom" in (bad.error or "") and bad.memo["run_id"]
    assert any(c.status == "waiting" and c.steps.get("execute.bad") == "failed" for c in calls)
    # a failed run is final for the worker loop
    assert world.engine(store).resume().status == "failed"
    # blocking calls still raise
    store2 = MemoryStateStore()
    with pytest.raises(OperationError, match="boom"):
        world.engine(store2).run_workflow("execute")


def test_cancel_cancels_waiting_ops_and_skips_the_rest(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    store = MemoryStateStore()
    run = world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False)
    assert run.status == "waiting"
    cancelled = world.engine(store).cancel()
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert sorted(world.service.cancels) == sorted(world.service.by_tag.values())  # each waiting run cancelled
    assert {op.status for op in cancelled.ops.values()} == {"cancelled"}
    assert cancelled.steps == {"execute.stage_in": "cancelled", "execute.side": "cancelled",
                               "execute.job": "skipped", "execute.stage_out": "skipped"}
    saved = store.load()
    assert saved is not None and saved.runs[-1].status == "cancelled"
    # never resumed: an explicit resume is refused, the worker entry point leaves it alone
    with pytest.raises(StateError, match="cancelled"):
        world.engine(store).run_workflow("execute", resume=True, blocking=False)
    assert world.engine(store).resume().status == "cancelled"
    assert world.engine(store).cancel().status == "cancelled"  # idempotent
    assert len(world.service.triggers) == 2
    # a new run may start afterwards
    assert world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False).status == "waiting"


def test_cancel_finds_a_started_op_by_tag_when_the_memo_was_lost(tmp_path: Path) -> None:
    store = FreezingStore()
    world = World(tmp_path, HEADER + TYPES + """
topology_template:
  node_templates:
    one: {type: test.Wait, properties: {polls: 5}}
""", on_trigger=lambda request: store.freeze())
    world.engine(store).deploy(blocking=False)  # dies right after the trigger
    saved = store.load()
    assert saved is not None
    assert saved.runs[-1].status == "running" and saved.runs[-1].ops["one:Standard.create"].memo == {}
    store.frozen = False
    run = world.engine(store).cancel()
    assert run.status == "cancelled" and world.service.cancels == ["run-1"]
    record = store.load()
    assert record is not None and record.status == "cancelled"


def test_crash_after_side_effect_resumes_without_repeating_it(tmp_path: Path) -> None:
    store = FreezingStore()
    world = World(tmp_path, DEPLOY_TEMPLATE,
                  on_trigger=lambda request: store.freeze() if request.node == "w2" else None)
    world.engine(store, workers=1).deploy(blocking=False)  # "SIGKILL" right after w2's trigger
    saved = store.load()
    assert saved is not None and saved.runs[-1].status == "running"
    assert saved.runs[-1].ops["w2:Standard.create"].status == "running"
    store.frozen = False
    triggers_before = len(world.service.triggers)
    calls = drive(lambda: world.engine(store).deploy(resume=True, blocking=False))
    assert calls[-1].status == "done"
    w2 = calls[-1].ops["w2:Standard.create"]
    assert w2.attempts == 2  # started again: the executor found its run by tag
    assert world.service.started_nodes().count("w2") == 1
    assert len(world.service.triggers) == triggers_before + 1  # only after_w1 is new


def test_a_second_call_is_refused_while_a_run_waits(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    store = MemoryStateStore()
    world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False)
    with pytest.raises(StateError, match="waiting"):
        world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False)


def test_cancel_while_a_blocking_call_runs(tmp_path: Path) -> None:
    world = World(tmp_path, HEADER + TYPES + """
topology_template:
  node_templates:
    long: {type: test.Wait, properties: {polls: 1000, after: 0.05}}
    later: {type: test.Wait, requirements: [{dependency: long}]}
""")
    store = MemoryStateStore()
    engine = world.engine(store)
    result: dict[str, RunRecord] = {}
    thread = threading.Thread(target=lambda: result.setdefault("run", engine.deploy()))
    thread.start()
    deadline = time.monotonic() + 10
    while not world.service.polls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.cancel().status != "cancelled"  # only requested: the driving thread does it
    thread.join(10)
    assert not thread.is_alive()
    assert result["run"].status == "cancelled"
    assert world.service.cancels == ["run-1"] and world.service.started_nodes() == ["long"]


def test_cancel_check_is_honoured_between_calls(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    store = MemoryStateStore()
    world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False)
    flag = {"cancel": True}
    run = world.engine(store, cancel_check=lambda: flag["cancel"]).run_workflow("execute", resume=True,
                                                                                blocking=False)
    assert run.status == "cancelled" and len(world.service.cancels) == 2


def test_cancel_failure_keeps_the_request_and_a_resume_retries_it(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    store = MemoryStateStore()
    world.engine(store).run_workflow("execute", {"dataset": "d"}, blocking=False)
    original = world.suspendable.cancel

    def broken(request: OperationRequest, hooks: Any) -> None:
        raise DeployerError("the service is down")

    world.suspendable.cancel = broken  # type: ignore[method-assign]
    with pytest.raises(DeployerError, match="incomplete"):
        world.engine(store).cancel()
    saved = store.load()
    assert saved is not None and saved.runs[-1].cancel_requested and saved.runs[-1].status == "waiting"
    world.suspendable.cancel = original  # type: ignore[method-assign]
    run = world.engine(store).run_workflow("execute", resume=True, blocking=False)
    assert run.status == "cancelled" and len(world.service.cancels) == 2
    assert world.service.polls == []  # it cancelled instead of advancing


def test_executions_fork_the_deployment_record(tmp_path: Path) -> None:
    world = World(tmp_path, WORKFLOW_TEMPLATE)
    dep_store = MemoryStateStore()
    world.engine(dep_store).deploy()
    deployment = dep_store.load()
    assert deployment is not None and deployment.status == "deployed"
    stores = {f"ex{i}": MemoryStateStore(deployment.fork(f"ex{i}")) for i in (1, 2)}
    for ex_id, st in stores.items():
        assert world.engine(st, deployment_id=ex_id).run_workflow("execute", {"dataset": ex_id},
                                                                    blocking=False).status == "waiting"
    for ex_id, st in stores.items():
        drive(lambda ex_id=ex_id, st=st: world.engine(st, deployment_id=ex_id).resume())
        assert world.engine(st, deployment_id=ex_id).outputs()["staged"] == ex_id
    tags = world.service.triggers
    assert len(tags) == 8 and len(set(tags)) == 8
    assert {t.split(":")[1] for t in tags} == {"ex1", "ex2"}
    after = dep_store.load()
    assert after is not None and len(after.runs) == 1  # the deployment's own record is untouched


def test_old_records_load_and_tags_stay_short(tmp_path: Path) -> None:
    old = {"id": "d", "template": "t", "runs": [{"id": "r1", "workflow": "install", "status": "done",
                                                 "ops": {"a:Standard.create": {"status": "done"}}}]}
    record = DeploymentRecord.model_validate_json(json.dumps(old))
    assert record.runs[0].wake_at is None and record.runs[0].ops["a:Standard.create"].polls == 0
    op = OperationDef("Job", "run", None)
    from deployer.executors import HostSpec

    def tag(key: str) -> str:
        return OperationRequest("d" * 64, "r" * 64, "n", op, {}, HostSpec(), key=key).tag

    long1, long2 = tag("execute.step#0:" + "x" * 80), tag("execute.step#0:" + "x" * 79 + "y")
    assert len(long1) <= 128 and len(long2) <= 128 and long1 != long2
    assert tag("a b") == tag("a b") and " " not in tag("a b")


def test_registry_resolves_lazy_executors_and_refuses_unregistered_services() -> None:
    assert is_suspendable(registry.get("hpcwaas.artifacts.Implementation.SlurmJob"))
    assert registry.needs_file("hpcwaas.artifacts.Implementation.Ansible") is True
    with pytest.raises(TypeError):
        registry.copy().register(STAGE_IN, object())  # type: ignore[arg-type]


class RecordingService(FakeSuspendableExecutor):
    """Fake service executor for the wordcount example: records requests, sets profile attributes."""

    def __init__(self, service: FakeService, attributes: Callable[[OperationRequest], dict[str, Any]]) -> None:
        super().__init__(service)
        self.attributes = attributes

    def poll(self, request: OperationRequest, hooks: Any) -> Any:
        outcome = super().poll(request, hooks)
        if hasattr(outcome, "attributes") and not hasattr(outcome, "after"):
            outcome.attributes.update(self.attributes(request))
        return outcome


def test_wordcount_example_runs_with_service_executors(tmp_path: Path) -> None:
    from deployer.executors import IMAGE_BUILD, SLURM_JOB, STAGE_OUT
    from tosca import EXAMPLES_DIR

    service = FakeService()
    software, work = "/home/u/waas-software/d1", "/home/r/waas/executions/ex-1"
    executors = registry.copy()
    executors.register(IMAGE_BUILD, RecordingService(service, lambda r: {"image_file": "/cache/wc.sif"}))
    executors.register(IMAGE_TRANSFER, RecordingService(
        service, lambda r: {"image_file_path": f"{r.host.work_dir}/{r.inputs['target_path']}"}))
    executors.register(STAGE_IN, RecordingService(
        service, lambda r: {"site_path": f"{r.host.work_dir}/{r.inputs['path']}"}))
    executors.register(SLURM_JOB, RecordingService(service, lambda r: {"job_id": "77", "stdout_tail": "the\t3\n"}))
    executors.register(STAGE_OUT, RecordingService(service, lambda r: {"dataset_id": "ds-result"}))
    site_prepare = CountingBlockingExecutor()
    executors.register("hpcwaas.artifacts.Implementation.Ansible", site_prepare)
    # The developer (u) installs; the invoking user (r) runs, with her own key and folder.
    inputs = {"host_key": "ssh-ed25519 AAAA", "username": "u", "credential": "u/k", "software_dir": software,
              "run_username": "r", "run_credential": "r/k2", "run_work_dir": work}
    dep = MemoryStateStore()
    from deployer.api import open_engine

    def engine(store: StateStore, ident: str) -> Any:
        return open_engine(EXAMPLES_DIR / "wordcount", store, deployment_id=ident, inputs=inputs,
                           executors=executors)

    with engine(dep, "wc-dep") as e:
        assert drive(lambda: e.deploy(resume=bool(e.record.runs), blocking=False))[-1].status == "done"
    deployment = dep.load()
    assert deployment is not None and deployment.nodes["image_on_site"].attributes["image_file_path"] == \
        f"{software}/images/wordcount.sif"
    ex = MemoryStateStore(deployment.fork("ex-1"))
    with engine(ex, "ex-1") as e:
        first = e.run_workflow("execute", {"dataset": "ds-7", "top": 5, "run_id": "forged"}, blocking=False,
                               run_id="ex-1")
    assert first.status == "waiting" and first.inputs["run_id"] == "ex-1"  # provided, not the caller's
    with engine(ex, "ex-1") as e:
        run = drive(lambda: e.resume())[-1]
        outs = e.outputs()
    assert run.status == "done" and list(run.steps) == ["execute.stage_in", "execute.count", "execute.stage_out"]
    assert outs["result_dataset"] == "ds-result" and outs["job_id"] == "77"
    requests = {r.node: r.request for r in service.runs.values() if r.request is not None}
    stage_in = requests["stage_in"]
    assert stage_in is not None and stage_in.inputs["dataset"] == "ds-7"
    assert stage_in.inputs["path"] == "runs/ex-1/input" and stage_in.host.credential == "r/k2"
    assert stage_in.host.endpoint is not None and stage_in.host.username == "r" and stage_in.host.work_dir == work
    job = requests["count"]
    assert job is not None and job.inputs["env"] == {
        "WC_EXEC": "apptainer exec", "WC_IMAGE": f"{software}/images/wordcount.sif",
        "WC_INPUT": f"{work}/runs/ex-1/input", "WC_OUTPUT": f"{work}/runs/ex-1/counts.tsv", "WC_TOP": 5}
    out = requests["stage_out"]
    assert out is not None and out.inputs["path"] == "runs/ex-1/counts.tsv"
    assert out.inputs["dataset_name"] == "wordcount result" and out.tag.startswith("hpcwaas:ex-1:ex-1:execute.")
    build = requests["image"]
    assert build is not None and build.artifacts["image_spec"].name == "image.yaml"
