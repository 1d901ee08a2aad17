"""The deployer's model: the static topology built from a validated template, and the instances.

The static side (:class:`Topology`, :class:`NodeTemplate`, ...) is plain data computed once by
:mod:`deployer.validate`, with interface operations already merged along the type chain (which
tosca-parser does not do). The dynamic side (:class:`NodeInstance`) is what the state store
persists: one instance per node template, with its TOSCA state, attributes and operation outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

HOSTED_ON = "tosca.relationships.HostedOn"
DEPENDS_ON = "tosca.relationships.DependsOn"
CONNECTS_TO = "tosca.relationships.ConnectsTo"

STANDARD = "Standard"
CONFIGURE = "Configure"


class NodeState(StrEnum):
    """TOSCA 1.3 normative node states (section 3.4.1)."""

    INITIAL = "initial"
    """Not created yet: nothing exists on any host."""
    CREATING = "creating"
    """Standard.create is running."""
    CREATED = "created"
    """Standard.create succeeded (or there is none)."""
    CONFIGURING = "configuring"
    """pre_configure_*, Standard.configure or post_configure_* are running."""
    CONFIGURED = "configured"
    """Configured and not running; also where Standard.stop leaves a node."""
    STARTING = "starting"
    """Standard.start is running."""
    STARTED = "started"
    """Deployed and running: dependants may be deployed."""
    STOPPING = "stopping"
    """Standard.stop is running; the node goes back to configured."""
    DELETING = "deleting"
    """Standard.delete is running."""
    DELETED = "deleted"
    """Removed: undeploy finished for this node."""
    ERROR = "error"
    """An operation failed; the node keeps this state until a resume or undeploy moves it on."""


#: States in which a node's deployment is complete.
DEPLOYED_STATES = frozenset({NodeState.STARTED})
#: States from which undeploy has nothing left to do for a node.
UNDEPLOYED_STATES = frozenset({NodeState.INITIAL, NodeState.DELETED})
#: States that no operation is currently changing.
STABLE_STATES = frozenset(
    {NodeState.INITIAL, NodeState.CREATED, NodeState.CONFIGURED, NodeState.STARTED, NodeState.DELETED, NodeState.ERROR}
)


@dataclass(frozen=True)
class Implementation:
    """How an operation is implemented: an artifact type and its primary file (if any)."""

    artifact_type: str
    primary: str | None = None
    path: Path | None = None
    dependencies: tuple[Path, ...] = ()
    timeout: float | None = None


@dataclass
class OperationDef:
    """One interface operation of a node or relationship, merged along the type chain."""

    interface: str
    name: str
    implementation: Implementation | None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    line: int | None = None

    @property
    def key(self) -> str:
        """``Interface.operation``."""
        return f"{self.interface}.{self.name}"


@dataclass
class ArtifactDef:
    """A node artifact (copied into each operation's private run directory)."""

    name: str
    type: str
    file: str
    path: Path
    deploy_path: str | None = None


@dataclass
class RequirementDef:
    """One requirement assignment: a relationship from its node (the source) to a target node."""

    name: str
    target: str
    relationship: str
    chain: tuple[str, ...]
    operations: dict[str, OperationDef] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    def is_a(self, type_name: str) -> bool:
        """True when the relationship type is ``type_name`` or derives from it."""
        return type_name in self.chain


@dataclass
class NodeTemplate:
    """A node template with everything resolved that can be resolved before running."""

    name: str
    type: str
    chain: tuple[str, ...]
    properties: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    requirements: list[RequirementDef] = field(default_factory=list)
    operations: dict[str, OperationDef] = field(default_factory=dict)
    artifacts: dict[str, ArtifactDef] = field(default_factory=dict)
    file: str | None = None
    line: int | None = None

    def is_a(self, type_name: str) -> bool:
        """True when the node's type is ``type_name`` or derives from it."""
        return type_name in self.chain

    @property
    def host(self) -> str | None:
        """The target of the node's HostedOn requirement, if any."""
        for req in self.requirements:
            if req.is_a(HOSTED_ON):
                return req.target
        return None

    def requirement(self, name: str) -> RequirementDef | None:
        """The first requirement with this name."""
        return next((r for r in self.requirements if r.name == name), None)


@dataclass
class InputDef:
    """A topology or workflow input declaration."""

    name: str
    type: str = "string"
    default: Any = None
    required: bool = True
    secret: bool = False
    description: str | None = None
    line: int | None = None
    provided: str | None = None  # metadata hpcwaas.provided: run_id | deployment_id (set by the engine)
    constraints: list[Any] = field(default_factory=list)  # TOSCA constraint clauses (deployer.constraints)

    @property
    def mandatory(self) -> bool:
        """An input that must be given: required and without a default."""
        return self.required and self.default is None


@dataclass
class WorkflowStep:
    """One step of an imperative workflow."""

    name: str
    target: str
    activities: list[dict[str, Any]]
    on_success: list[str] = field(default_factory=list)
    on_failure: list[str] = field(default_factory=list)
    target_relationship: str | None = None
    line: int | None = None


@dataclass
class WorkflowDef:
    """A TOSCA 1.3 imperative workflow."""

    name: str
    description: str | None = None
    inputs: dict[str, InputDef] = field(default_factory=dict)
    steps: dict[str, WorkflowStep] = field(default_factory=dict)


@dataclass
class Topology:
    """A validated service template, ready to plan and run."""

    source: str
    root: Path
    entry: str
    description: str | None
    inputs: dict[str, InputDef]
    nodes: dict[str, NodeTemplate]
    outputs: dict[str, Any]
    workflows: dict[str, WorkflowDef]

    def node(self, name: str) -> NodeTemplate:
        """The node template named ``name`` (KeyError when unknown)."""
        return self.nodes[name]

    def secret_inputs(self) -> set[str]:
        """Names of inputs that must never be persisted."""
        return {name for name, spec in self.inputs.items() if spec.secret}


class NodeInstance(BaseModel):
    """The runtime side of one node: state, attributes and operation outputs."""

    name: str
    state: NodeState = NodeState.INITIAL
    attributes: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Interface.op -> outputs")
