"""TOSCA intrinsic functions, evaluated by the deployer itself.

tosca-parser resolves some functions at parse time but never runtime values (attributes,
operation outputs), and it reads ``get_property: [SELF, <requirement>, prop]`` as a capability
lookup. This evaluator implements get_input, get_property, get_attribute (SELF, SOURCE, TARGET,
HOST, a node name, and a requirement name as second argument), concat, join, token,
get_operation_output and get_artifact, in two modes:

* static (``instances=None``): every reference is checked against the topology and runtime
  values are replaced by placeholders; :mod:`deployer.validate` uses it to find bad functions
  before anything runs;
* runtime: values come from the node instances, the deployment inputs and the artifacts copied
  for the current operation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.errors import FunctionError
from deployer.model import NodeInstance, NodeTemplate, RequirementDef, Topology

FUNCTIONS = frozenset(
    {"get_input", "get_property", "get_attribute", "concat", "join", "token", "get_operation_output", "get_artifact"}
)
# Names TOSCA (or other orchestrators) define that this deployer does not implement: reported as
# unsupported rather than taken as a plain map.
KNOWN_UNSUPPORTED = frozenset({"get_nodes_of_type", "get_secret", "get_vault_secret", "get_env", "get_input_default"})
_KEYWORDS = frozenset({"SELF", "SOURCE", "TARGET", "HOST"})


def function_name(value: Any) -> str | None:
    """The function name if ``value`` is a function call (a one-key map such as ``{get_input: x}``)."""
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        if isinstance(key, str) and (key in FUNCTIONS or key in KNOWN_UNSUPPORTED or key.startswith("get_")):
            return key
    return None


@dataclass(frozen=True)
class Context:
    """Where a function is evaluated: the node (SELF) and, for relationship operations, both ends."""

    node: str
    source: str | None = None
    target: str | None = None
    requirement: RequirementDef | None = None
    field: str | None = None


class _Placeholder(str):
    """A runtime value not known during static checks (still a str so concat/join work)."""

    __slots__ = ()


class Evaluator:
    """Evaluates TOSCA functions against a topology (static mode when ``instances`` is None)."""

    def __init__(
        self,
        topology: Topology,
        inputs: Mapping[str, Any],
        instances: Mapping[str, NodeInstance] | None = None,
        *,
        extra_inputs: Mapping[str, Any] | None = None,
        artifact_paths: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.topology = topology
        self.inputs = dict(inputs)
        if extra_inputs:
            self.inputs.update(extra_inputs)  # workflow inputs shadow topology inputs
        self.instances = instances
        self.static = instances is None
        self.artifact_paths = artifact_paths or {}
        self._depth = 0

    # -- public -----------------------------------------------------------------------------

    def evaluate(self, value: Any, ctx: Context) -> Any:
        """Evaluate every function inside ``value`` (maps and lists are walked)."""
        name = function_name(value)
        if name is not None:
            return self._call(name, value[name], ctx)
        if isinstance(value, dict):
            return {k: self.evaluate(v, ctx) for k, v in value.items()}
        if isinstance(value, list):
            return [self.evaluate(v, ctx) for v in value]
        return value

    # -- helpers ----------------------------------------------------------------------------

    def _fail(self, message: str, ctx: Context) -> FunctionError:
        return FunctionError(message, node=ctx.node, field=ctx.field)

    def _call(self, name: str, args: Any, ctx: Context) -> Any:
        self._depth += 1
        try:
            if self._depth > 50:
                raise self._fail(f"{name}: functions nest too deeply (a property refers to itself?)", ctx)
            handler = getattr(self, f"_fn_{name}", None)
            if name not in FUNCTIONS or handler is None:
                supported = ", ".join(sorted(FUNCTIONS))
                raise self._fail(f"unknown function {name!r} (supported: {supported})", ctx)
            return handler(args, ctx)
        finally:
            self._depth -= 1

    def _args(self, name: str, args: Any, ctx: Context, minimum: int, maximum: int | None = None) -> list[Any]:
        if not isinstance(args, list):
            args = [args]
        if len(args) < minimum or (maximum is not None and len(args) > maximum):
            want = (
                f"{minimum}" if maximum == minimum else f"{minimum} to {maximum}" if maximum else f"at least {minimum}"
            )
            raise self._fail(f"{name} takes {want} arguments, got {len(args)}: {args!r}", ctx)
        return list(args)

    def _entity(self, name: str, ref: Any, ctx: Context) -> NodeTemplate:
        if not isinstance(ref, str):
            raise self._fail(f"{name}: the first argument must be SELF, SOURCE, TARGET, HOST or a node name", ctx)
        if ref == "SELF":
            node = ctx.source if ctx.requirement is not None else ctx.node
        elif ref in ("SOURCE", "TARGET"):
            node = ctx.source if ref == "SOURCE" else ctx.target
            if node is None:
                raise self._fail(f"{name}: {ref} is only defined in relationship operations", ctx)
        elif ref == "HOST":
            base = ctx.source if ctx.requirement is not None and ctx.source else ctx.node
            node = self.topology.nodes[base].host
            if node is None:
                raise self._fail(f"{name}: HOST used but node {base!r} has no HostedOn requirement", ctx)
        else:
            node = ref
        if node not in self.topology.nodes:
            raise self._fail(f"{name}: no node template named {node!r}", ctx)
        return self.topology.nodes[node]

    def _host_chain(self, node: NodeTemplate) -> list[NodeTemplate]:
        chain, seen = [node], {node.name}
        while (host := chain[-1].host) is not None and host not in seen:
            seen.add(host)
            chain.append(self.topology.nodes[host])
        return chain

    @staticmethod
    def _dig(value: Any, path: list[Any], what: str) -> Any:
        for key in path:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
                value = value[key]
            elif isinstance(value, _Placeholder):
                return value
            else:
                raise KeyError(f"{what} has no element {key!r}")
        return value

    # -- functions --------------------------------------------------------------------------

    def _fn_get_input(self, args: Any, ctx: Context) -> Any:
        parts = self._args("get_input", args, ctx, 1)
        name = parts[0]
        if not isinstance(name, str) or name not in self.inputs:
            raise self._fail(f"get_input: no input named {name!r} is declared", ctx)
        value = self.inputs[name]
        try:
            return self._dig(value, parts[1:], f"input {name!r}")
        except KeyError as exc:
            raise self._fail(f"get_input: {exc.args[0]}", ctx) from exc

    def _lookup(self, fn: str, args: list[Any], ctx: Context, attribute: bool) -> Any:
        if ctx.requirement is not None and args[0] == "SELF" and not attribute:
            # SELF in a relationship operation: the relationship's own properties first.
            if isinstance(args[1], str) and args[1] in ctx.requirement.properties:
                return self.evaluate(ctx.requirement.properties[args[1]], ctx)
        node = self._entity(fn, args[0], ctx)
        rest = args[1:]
        candidates = self._host_chain(node)[1:] if args[0] == "HOST" else [node]
        if args[0] == "HOST":
            candidates = [self.topology.nodes[node.name], *candidates]
        first = rest[0]
        if not isinstance(first, str):
            raise self._fail(f"{fn}: the property or attribute name must be a string, got {first!r}", ctx)
        # [entity, <requirement>, name, ...] reads the requirement target's value (as xOpera does).
        if len(rest) >= 2 and node.requirement(first) is not None and first not in node.properties:
            target = self.topology.nodes[node.requirement(first).target]  # type: ignore[union-attr]
            return self._value_of(fn, target, rest[1], rest[2:], ctx, attribute)
        if len(rest) >= 2 and first in node.capabilities and first not in node.properties:
            props = node.capabilities[first]
            if rest[1] not in props:
                raise self._fail(f"{fn}: capability {first!r} of node {node.name!r} has no property {rest[1]!r}", ctx)
            value = self.evaluate(props[rest[1]], Context(node=node.name, field=ctx.field))
            return self._dig_or_fail(fn, value, rest[2:], f"{node.name}.{first}.{rest[1]}", ctx)
        errors: list[FunctionError] = []
        for candidate in candidates:
            try:
                return self._value_of(fn, candidate, first, rest[1:], ctx, attribute)
            except FunctionError as exc:
                errors.append(exc)
        raise errors[0]

    def _dig_or_fail(self, fn: str, value: Any, path: list[Any], what: str, ctx: Context) -> Any:
        try:
            return self._dig(value, path, what)
        except KeyError as exc:
            raise self._fail(f"{fn}: {exc.args[0]}", ctx) from exc

    def _value_of(self, fn: str, node: NodeTemplate, name: str, path: list[Any], ctx: Context, attribute: bool) -> Any:
        if attribute:
            if node.name not in self.topology.nodes:
                raise self._fail(f"{fn}: no node template named {node.name!r}", ctx)
            if self.instances is not None:
                inst = self.instances.get(node.name)
                if inst is not None and name in inst.attributes:
                    return self._dig_or_fail(fn, inst.attributes[name], path, f"{node.name}.{name}", ctx)
            if name in node.properties:
                value = self.evaluate(node.properties[name], Context(node=node.name, field=ctx.field))
                return self._dig_or_fail(fn, value, path, f"{node.name}.{name}", ctx)
            if name in node.attributes:
                if self.static:
                    return _Placeholder(f"<{node.name}.{name}>")
                return self._dig_or_fail(fn, node.attributes[name], path, f"{node.name}.{name}", ctx)
            raise self._fail(f"{fn}: node {node.name!r} ({node.type}) declares no attribute or property {name!r}", ctx)
        if name not in node.properties:
            raise self._fail(f"{fn}: node {node.name!r} ({node.type}) has no property {name!r}", ctx)
        value = self.evaluate(node.properties[name], Context(node=node.name, field=ctx.field))
        return self._dig_or_fail(fn, value, path, f"{node.name}.{name}", ctx)

    def _fn_get_property(self, args: Any, ctx: Context) -> Any:
        return self._lookup("get_property", self._args("get_property", args, ctx, 2), ctx, attribute=False)

    def _fn_get_attribute(self, args: Any, ctx: Context) -> Any:
        return self._lookup("get_attribute", self._args("get_attribute", args, ctx, 2), ctx, attribute=True)

    def _fn_concat(self, args: Any, ctx: Context) -> str:
        parts = self._args("concat", args, ctx, 1)
        return "".join("" if v is None else str(v) for v in (self.evaluate(p, ctx) for p in parts))

    def _fn_join(self, args: Any, ctx: Context) -> str:
        parts = self._args("join", args, ctx, 1, 2)
        items = self.evaluate(parts[0], ctx)
        if not isinstance(items, list):
            raise self._fail("join: the first argument must be a list of strings", ctx)
        delimiter = self.evaluate(parts[1], ctx) if len(parts) > 1 else ""
        return str(delimiter).join(str(v) for v in items)

    def _fn_token(self, args: Any, ctx: Context) -> str:
        parts = self._args("token", args, ctx, 3, 3)
        text, chars, index = (self.evaluate(p, ctx) for p in parts)
        if not isinstance(index, int) or not isinstance(chars, str) or not chars:
            raise self._fail("token takes [string, separator characters, index]", ctx)
        if isinstance(text, _Placeholder):
            return text
        tokens = re.split("[" + re.escape(chars) + "]", str(text))
        if not -len(tokens) <= index < len(tokens):
            raise self._fail(f"token: index {index} out of range for {len(tokens)} tokens", ctx)
        return tokens[index]

    def _fn_get_operation_output(self, args: Any, ctx: Context) -> Any:
        parts = self._args("get_operation_output", args, ctx, 4, 4)
        node = self._entity("get_operation_output", parts[0], ctx)
        key = f"{parts[1]}.{parts[2]}"
        if key not in node.operations:
            raise self._fail(f"get_operation_output: node {node.name!r} has no operation {key}", ctx)
        if self.static or self.instances is None:
            return _Placeholder(f"<{node.name}.{key}.{parts[3]}>")
        inst = self.instances.get(node.name)
        outputs = inst.outputs.get(key, {}) if inst is not None else {}
        if parts[3] not in outputs:
            raise self._fail(f"get_operation_output: {node.name} {key} has no output {parts[3]!r} (has it run?)", ctx)
        return outputs[parts[3]]

    def _fn_get_artifact(self, args: Any, ctx: Context) -> str:
        parts = self._args("get_artifact", args, ctx, 2, 4)
        node = self._entity("get_artifact", parts[0], ctx)
        name = parts[1]
        if name not in node.artifacts:
            raise self._fail(f"get_artifact: node {node.name!r} has no artifact {name!r}", ctx)
        if len(parts) > 2 and parts[2] not in (None, "LOCAL_FILE"):
            return str(parts[2])
        return self.artifact_paths.get((node.name, name), str(node.artifacts[name].path))
