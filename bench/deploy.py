"""Deployer bench: wall time, orchestration overhead per operation, parallel/serial ratio.

Deploys topologies of N trivial nodes on localhost and prints ratios measured in the same run:

* overhead per operation outside Ansible: (deploy wall time - time inside ansible-runner) / ops,
  serial; and the same with the built-in no-op executor (pure engine cost: validation excluded,
  state persisted with fsync after every transition);
* parallel / serial wall time for N independent nodes with W workers (target <= 0.5 for 20/10).

Usage: .venv/bin/python bench/deploy.py [--nodes 20] [--workers 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from deployer.engine import Engine
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


def deploy(n: int, chained: bool, workers: int, noop: bool) -> tuple[float, float, int]:
    """Deploy once; return (wall seconds, seconds inside the executor, operations)."""
    impl = "{implementation: {primary: {file: x, type: hpcwaas.artifacts.Implementation.Noop}}}" if noop else "p.yml"
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        (root / "service.yaml").write_text(template(n, chained, impl))
        (root / "p.yml").write_text(PLAYBOOK)
        with open_package(root / "service.yaml") as package:
            topology, inputs = load_topology(package)
            engine = Engine(topology, FolderStateStore(root / "state"), deployment_id="bench", inputs=inputs,
                            workers=workers)
            started = time.perf_counter()
            engine.deploy()
            wall = time.perf_counter() - started
        return wall, engine.executor_seconds, engine.ops_run


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


if __name__ == "__main__":
    main()
