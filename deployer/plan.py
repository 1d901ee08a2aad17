"""Plans: which operations run, on which node, in which order, and what can run in parallel.

The dependency graph comes from requirements (HostedOn, DependsOn, ConnectsTo and custom
relationships alike): a node is deployed after every node it requires is started, and
undeployed before them. Within a node, the TOSCA normative lifecycle orders the work:

deploy: ``create`` -> ``pre_configure_source`` / ``pre_configure_target`` (per requirement) ->
``configure`` -> ``post_configure_source`` / ``post_configure_target`` -> ``start`` ->
``add_target`` / ``add_source``.

undeploy: ``remove_target`` / ``remove_source`` -> ``stop`` -> ``delete``.

``*_source`` and ``add_target``/``remove_target`` run on the source node's host, ``*_target`` and
``add_source``/``remove_source`` on the target's. Waves group nodes whose dependencies are all
in earlier waves: they are what a worker pool may run at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployer.errors import Issue, TemplateError
from deployer.model import CONFIGURE, STANDARD, NodeState, OperationDef, RequirementDef, Topology
from deployer.validate import find_cycle


@dataclass(frozen=True)
class PlannedOp:
    """One operation to run."""

    key: str  # unique in a run: "<node>:<Iface.op>" or "<node>/<req>[i]:<Configure.op>"
    node: str  # the node whose lifecycle this belongs to
    op: OperationDef
    runs_on: str  # the node whose host runs it (source or target of a relationship)
    requirement: RequirementDef | None = None
    target: str | None = None

    @property
    def label(self) -> str:
        """Human-readable name."""
        if self.requirement is not None:
            return f"{self.node} -[{self.requirement.name}]-> {self.target}: {self.op.key}"
        return f"{self.node}: {self.op.key}"


@dataclass
class Phase:
    """A group of operations moving a node from one state to another."""

    ops: list[PlannedOp]
    during: NodeState | None = None
    after: NodeState | None = None


@dataclass
class NodePlan:
    """All the work for one node, and the nodes that must be done first."""

    node: str
    waits_for: list[str]
    phases: list[Phase] = field(default_factory=list)

    @property
    def ops(self) -> list[PlannedOp]:
        """The operations in order."""
        return [op for phase in self.phases for op in phase.ops]


@dataclass
class Plan:
    """An ordered plan with its parallel waves."""

    kind: str
    nodes: dict[str, NodePlan]
    waves: list[list[str]]

    @property
    def op_count(self) -> int:
        """Operations that will run (with an implementation)."""
        return sum(len(n.ops) for n in self.nodes.values())


_ON_SOURCE = frozenset({"pre_configure_source", "post_configure_source", "add_target", "remove_target"})


def _node_op(topology: Topology, node: str, name: str) -> list[PlannedOp]:
    op = topology.nodes[node].operations.get(f"{STANDARD}.{name}")
    if op is None or op.implementation is None:
        return []
    return [PlannedOp(f"{node}:{op.key}", node, op, node)]


def _rel_ops(topology: Topology, node: str, name: str) -> list[PlannedOp]:
    out: list[PlannedOp] = []
    for i, req in enumerate(topology.nodes[node].requirements):
        op = req.operations.get(f"{CONFIGURE}.{name}")
        if op is None or op.implementation is None:
            continue
        runs_on = node if name in _ON_SOURCE else req.target
        out.append(PlannedOp(f"{node}/{req.name}[{i}]:{op.key}", node, op, runs_on, req, req.target))
    return out


def dependencies(topology: Topology) -> dict[str, list[str]]:
    """node -> the nodes it requires (deduplicated, in requirement order)."""
    out: dict[str, list[str]] = {}
    for node in topology.nodes.values():
        seen: list[str] = []
        for req in node.requirements:
            if req.target not in seen:
                seen.append(req.target)
        out[node.name] = seen
    return out


def waves(edges: dict[str, list[str]]) -> list[list[str]]:
    """Kahn levels: each wave depends only on earlier waves. Raises TemplateError on a cycle."""
    cycle = find_cycle(edges)
    if cycle:
        raise TemplateError(Issue(f"requirements form a dependency cycle: {' -> '.join(cycle)}", node=cycle[0]))
    level: dict[str, int] = {}

    def depth(n: str) -> int:
        if n not in level:
            level[n] = 1 + max((depth(m) for m in edges.get(n, [])), default=-1)
        return level[n]

    for n in edges:
        depth(n)
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for n in edges:  # template order inside a wave
        out[level[n]].append(n)
    return out


def deploy_plan(topology: Topology) -> Plan:
    """The install plan."""
    deps = dependencies(topology)
    nodes: dict[str, NodePlan] = {}
    for name in topology.nodes:
        plan = NodePlan(name, deps[name])
        plan.phases.append(Phase(_node_op(topology, name, "create"), NodeState.CREATING, NodeState.CREATED))
        configure = (
            _rel_ops(topology, name, "pre_configure_source")
            + _rel_ops(topology, name, "pre_configure_target")
            + _node_op(topology, name, "configure")
            + _rel_ops(topology, name, "post_configure_source")
            + _rel_ops(topology, name, "post_configure_target")
        )
        plan.phases.append(Phase(configure, NodeState.CONFIGURING, NodeState.CONFIGURED))
        plan.phases.append(Phase(_node_op(topology, name, "start"), NodeState.STARTING, NodeState.STARTED))
        links = _rel_ops(topology, name, "add_target") + _rel_ops(topology, name, "add_source")
        if links:
            plan.phases.append(Phase(links))
        nodes[name] = plan
    return Plan("deploy", nodes, waves(deps))


def undeploy_plan(topology: Topology) -> Plan:
    """The uninstall plan: dependants before what they depend on."""
    deps = dependencies(topology)
    reverse: dict[str, list[str]] = {n: [] for n in topology.nodes}
    for n, targets in deps.items():
        for t in targets:
            reverse[t].append(n)
    nodes: dict[str, NodePlan] = {}
    for name in topology.nodes:
        plan = NodePlan(name, reverse[name])
        unlinks = _rel_ops(topology, name, "remove_target") + _rel_ops(topology, name, "remove_source")
        if unlinks:
            plan.phases.append(Phase(unlinks))
        plan.phases.append(Phase(_node_op(topology, name, "stop"), NodeState.STOPPING, NodeState.CONFIGURED))
        plan.phases.append(Phase(_node_op(topology, name, "delete"), NodeState.DELETING, NodeState.DELETED))
        nodes[name] = plan
    return Plan("undeploy", nodes, waves(reverse))


def render(plan: Plan) -> list[str]:
    """The plan as text lines, wave by wave."""
    lines: list[str] = []
    for i, wave in enumerate(plan.waves, 1):
        lines.append(f"wave {i}: {', '.join(wave)}")
        for name in wave:
            ops = plan.nodes[name].ops
            if not ops:
                lines.append(f"  {name}: (no operations)")
            for op in ops:
                impl = op.op.implementation
                what = impl.primary if impl and impl.primary else (impl.artifact_type if impl else "")
                on = f" on {op.runs_on}'s host" if op.runs_on != op.node else ""
                lines.append(f"  {op.label} [{what}]{on}")
    return lines
