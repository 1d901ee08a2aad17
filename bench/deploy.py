"""Deployer bench: wall time, orchestration overhead per operation, parallel/serial ratio.

Deploys topologies of N trivial nodes on localhost and prints ratios measured in the same run:

* overhead per operation outside Ansible: (deploy wall time - time inside ansible-runner) / ops,
  serial; and the same with the built-in no-op executor (pure engine cost: validation excluded,
  state persisted with fsync after every transition);
* parallel / serial wall time for N independent nodes with W workers (target <= 0.5 for 20/10);
* the cost of one non-blocking monitoring call over N waiting operations (what a gateway worker
  pays per wake-up): none due (no poll), and all due (one in-process poll each);
* sandboxed / unsandboxed wall time of the same serial Ansible deploy (bubblewrap, a pool uid,
  a private run folder and the bundle's copy: what isolating developer code costs per operation).

Usage: .venv/bin/python bench/deploy.py [--nodes 20] [--workers 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from deployer.engine import Engine
from deployer.executors import STAGE_IN, OperationRequest, OperationResult, Waiting, registry
from deployer.loader import open_package
from deployer.state import FolderStateStore
from deployer.validate import load_topology

PLAYBOOK = "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.set_stats: {data: {done: true}}\n"


def template(n: int, chained: bool, impl: str) -> str:
    lines = [
        "tosca_definitions_version: tosca_simple_yaml_1_3",
        "node_types:",
        "  bench.Node:",
        "    derived_from: tosca.nodes.Root",
        "    attributes: {done: {type: boolean}}",
        "    interfaces:",
        "      Standard:",
        f"        create: {impl}",
        "topology_template:",
        "  node_templates:",
    ]
    for i in range(n):
        dep = f", requirements: [{{dependency: n{i - 1}}}]" if chained and i else ""
        lines.append(f"    n{i}: {{type: bench.Node{dep}}}")
    return "\n".join(lines) + "\n"


def deploy(n: int, chained: bool, workers: int, noop: bool, sandbox: bool = True) -> tuple[float, float, int]:
    """Deploy once; return (wall seconds, seconds inside the executor, operations)."""
    impl = "{implementation: {primary: {file: x, type: hpcwaas.artifacts.Implementation.Noop}}}" if noop else "p.yml"
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        (root / "service.yaml").write_text(template(n, chained, impl))
        (root / "p.yml").write_text(PLAYBOOK)
        with open_package(root / "service.yaml") as package:
            topology, inputs = load_topology(package)
            engine = Engine(topology, FolderStateStore(root / "state"), deployment_id="bench", inputs=inputs,
                            workers=workers, sandbox=sandbox)
            started = time.perf_counter()
            engine.deploy()
            wall = time.perf_counter() - started
        return wall, engine.executor_seconds, engine.ops_run


class _Sleeper:
    """A suspendable executor that stays waiting for ``polls`` polls (no I/O)."""

    needs_file = False

    def __init__(self, after: float, polls: int) -> None:
        self.after, self.polls = after, polls

    def start(self, request: OperationRequest, hooks: Any) -> Waiting:
        return Waiting(after=self.after, memo={"n": 0})

    def poll(self, request: OperationRequest, hooks: Any) -> OperationResult | Waiting:
        n = int(request.memo.get("n", 0)) + 1
        return OperationResult() if n >= self.polls else Waiting(after=self.after, memo={"n": n})

    def cancel(self, request: OperationRequest, hooks: Any) -> None:
        return None


def monitoring(n: int) -> tuple[float, float]:
    """ms per non-blocking resume call over n waiting ops: (none due, all due and polled)."""
    impl = "{implementation: {primary: {file: x, type: hpcwaas.artifacts.Implementation.StageIn}}}"
    out = []
    for after in (3600.0, 0.0):
        executors = registry.copy()
        executors.register(STAGE_IN, _Sleeper(after, polls=1000))
        with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
            root = Path(tmp)
            (root / "service.yaml").write_text(template(n, False, impl))
            with open_package(root / "service.yaml") as package:
                topology, inputs = load_topology(package)

            def engine(topology: Any = topology, root: Path = root, inputs: Any = inputs,
                       executors: Any = executors) -> Engine:
                return Engine(topology, FolderStateStore(root / "state"), deployment_id="bench", inputs=inputs,
                              workers=4, executors=executors)

            engine().deploy(blocking=False)
            started = time.perf_counter()
            calls = 10
            for _ in range(calls):
                run = engine().deploy(resume=True, blocking=False)
                assert run.status == "waiting"
            out.append((time.perf_counter() - started) / calls * 1000)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    n, w = args.nodes, args.workers

    deploy(1, False, 1, noop=False)  # warm up: imports, first ansible run

    wall, _inside, ops = deploy(200, True, 1, noop=True)
    print(f"no-op executor, 200 chained nodes, serial: {wall:.2f} s, engine overhead {wall / ops * 1000:.1f} ms/op")

    serial, inside_s, ops_s = deploy(n, False, 1, noop=False)
    over = (serial - inside_s) / ops_s
    print(f"ansible, {n} independent nodes, 1 worker:  {serial:.2f} s total, {inside_s:.2f} s inside ansible-runner, "
          f"overhead {over * 1000:.1f} ms/op (target < 50)")

    chained, inside_c, ops_c = deploy(n, True, w, noop=False)
    print(f"ansible, {n} chained nodes, {w} workers:   {chained:.2f} s total, "
          f"overhead {(chained - inside_c) / ops_c * 1000:.1f} ms/op")

    parallel, _, _ = deploy(n, False, w, noop=False)
    ratio = parallel / serial
    print(f"ansible, {n} independent nodes, {w} workers: {parallel:.2f} s total")
    print(f"parallel/serial ratio: {ratio:.2f} (target <= 0.50)")
    print(f"chained/serial ratio:  {chained / serial:.2f} (a chain cannot run in parallel: expect ~1)")

    rounds: dict[bool, list[float]] = {True: [], False: []}  # alternate, so the machine's noise falls on both alike
    for _ in range(3):
        for boxed in (False, True):
            wall, _, ops = deploy(5, False, 1, noop=False, sandbox=boxed)
            rounds[boxed].append(wall / ops)
    in_box, bare = sorted(rounds[True])[1], sorted(rounds[False])[1]
    print(f"ansible, 5 nodes, serial, median of 3 rounds: sandboxed {in_box * 1000:.0f} ms/op, "
          f"unsandboxed {bare * 1000:.0f} ms/op, ratio {in_box / bare:.2f}")

    idle, due = monitoring(50)
    print(f"non-blocking resume call, 50 waiting ops (fresh Engine, folder store): {idle:.1f} ms when none is due, "
          f"{due:.1f} ms when all are polled ({due / 50:.2f} ms/op, executor time excluded)")


if __name__ == "__main__":
    main()
