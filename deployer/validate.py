"""Build a :class:`~deployer.model.Topology` from a package, with the checks tosca-parser lacks.

tosca-parser validates types, properties and template fields; on top of it this module checks
what an orchestrator needs before it runs anything (see ``notes/libraries.md``): imports stay
inside the package (no URLs), required inputs are given, interface operations are merged along
the type chain, operation inputs, properties and outputs use known functions with resolvable
references, implementation and artifact files exist, requirements target node templates, the
requirement graph has no cycle, and imperative workflows refer to real nodes, operations and
steps. Every problem becomes an :class:`~deployer.errors.Issue` naming the file, the node or
type, the field, and the YAML line.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer import constraints, tosca_parser
from deployer.errors import FunctionError, InputError, Issue, TemplateError
from deployer.functions import Context, Evaluator, function_name
from deployer.loader import Package, YamlDocument, read_yaml, resolve_inside
from deployer.model import (
    DEPENDS_ON,
    ArtifactDef,
    Implementation,
    InputDef,
    NodeState,
    NodeTemplate,
    OperationDef,
    RequirementDef,
    Topology,
    WorkflowDef,
    WorkflowStep,
)
from tosca import PROFILE_PATH, TOSCA_DIR

SUPPORTED_VERSIONS = ("tosca_simple_yaml_1_3", "tosca_simple_yaml_1_2", "tosca_simple_yaml_1_0")
PROFILE_ALIASES = frozenset({"hpcwaas", "hpcwaas.yaml", "hpcwaas-profile"})
TYPE_SECTIONS = (
    "node_types",
    "relationship_types",
    "capability_types",
    "interface_types",
    "data_types",
    "artifact_types",
    "policy_types",
    "group_types",
)
ANSIBLE = "hpcwaas.artifacts.Implementation.Ansible"
# Artifact types inferred from an implementation file's extension.
_BY_EXTENSION = {
    ".yml": ANSIBLE,
    ".yaml": ANSIBLE,
    ".sh": "tosca.artifacts.Implementation.Bash",
    ".py": "tosca.artifacts.Implementation.Python",
}
_INTERFACE_KEYS = frozenset({"type", "inputs", "notifications", "derived_from", "description", "operations"})

log = logging.getLogger(__name__)


@dataclass
class TypeDef:
    """One type definition with where it was written."""

    kind: str
    name: str
    defs: dict[str, Any]
    doc: YamlDocument | None
    display: str
    base_dir: Path
    root: Path

    def line(self, *path: str | int) -> int | None:
        """The YAML line of ``path`` inside this type definition."""
        return self.doc.line(self.kind, self.name, *path) if self.doc is not None else None


class Registry:
    """Every type visible to the template: normative, hpcwaas profile, imports, the template."""

    def __init__(self) -> None:
        self.types: dict[str, TypeDef] = {}

    def add_document(self, doc: YamlDocument, display: str, root: Path) -> None:
        """Register the types a document defines."""
        data = doc.data if isinstance(doc.data, dict) else {}
        for kind in TYPE_SECTIONS:
            for name, defs in (data.get(kind) or {}).items():
                if isinstance(defs, dict):
                    self.types[name] = TypeDef(kind, name, defs, doc, display, doc.file.parent, root)

    def chain(self, name: str) -> list[TypeDef]:
        """The type and its ancestors, most derived first."""
        out: list[TypeDef] = []
        seen: set[str] = set()
        current: str | None = name
        while current and current not in seen and current in self.types:
            seen.add(current)
            t = self.types[current]
            out.append(t)
            current = t.defs.get("derived_from")
        return out

    def names(self, name: str) -> tuple[str, ...]:
        """The names along the chain of ``name``."""
        return tuple(t.name for t in self.chain(name))


def _normative() -> YamlDocument:
    import toscaparser.elements

    path = Path(toscaparser.elements.__file__).parent / "TOSCA_definition.yaml"
    return read_yaml(path)


_NORMATIVE: YamlDocument | None = None


def _normative_cached() -> YamlDocument:
    global _NORMATIVE
    if _NORMATIVE is None:
        _NORMATIVE = _normative()
    return _NORMATIVE


class _Checker:
    """Collects issues while building the topology."""

    def __init__(self, package: Package) -> None:
        self.package = package
        self.issues: list[Issue] = []
        self.registry = Registry()
        self.main: YamlDocument | None = None
        self.entry = package.display_entry

    def add(
        self,
        message: str,
        *path: str | int,
        node: str | None = None,
        field: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        if line is None and self.main is not None and file is None:
            line = self.main.line(*path)
        self.issues.append(Issue(message, file=file or self.entry, line=line, node=node, field=field))

    def fail_if_issues(self) -> None:
        if self.issues:
            raise TemplateError(self.issues)


# -- imports --------------------------------------------------------------------------------


def _import_files(
    chk: _Checker, doc: YamlDocument, display: str, root: Path, seen: set[Path]
) -> list[tuple[YamlDocument, str, Path]]:
    """Read the files ``doc`` imports (recursively), refusing URLs and paths leaving ``root``."""
    out: list[tuple[YamlDocument, str, Path]] = []
    data = doc.data if isinstance(doc.data, dict) else {}
    imports = data.get("imports") or []
    if not isinstance(imports, list):
        chk.add("imports must be a list", "imports", file=display, line=doc.line("imports"))
        return out
    for i, item in enumerate(imports):
        line = doc.line("imports", i)
        spec = item.get("file") if isinstance(item, dict) else item
        if isinstance(item, dict) and item.get("repository"):
            chk.add(
                "imports from repositories are not supported; copy the file into the package",
                file=display,
                line=line,
                field="imports",
            )
            continue
        if not isinstance(spec, str) or not spec:
            chk.add("an import needs a file name", file=display, line=line, field="imports")
            continue
        if spec in PROFILE_ALIASES:
            continue
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
            chk.add(
                f"import {spec!r} is a URL; only files inside the package can be imported",
                file=display,
                line=line,
                field="imports",
            )
            continue
        try:
            path = resolve_inside(doc.file.parent, spec, what="import", root=root, file=display, line=line)
            if not path.is_relative_to(root):
                raise TemplateError(Issue(f"import {spec!r} points outside the package", file=display, line=line))
        except TemplateError as exc:
            chk.issues.extend(exc.issues)
            continue
        if not path.is_file():
            chk.add(f"imported file {spec!r} does not exist", file=display, line=line, field="imports")
            continue
        if path in seen:
            continue
        seen.add(path)
        try:
            sub = read_yaml(path, root=root)
        except TemplateError as exc:
            chk.issues.extend(exc.issues)
            continue
        sub_display = str(path.relative_to(root))
        out.append((sub, sub_display, path))
        out.extend(_import_files(chk, sub, sub_display, root, seen))
    return out


def _parser_dict(data: dict[str, Any], imports: list[str]) -> dict[str, Any]:
    """A copy of the template for tosca-parser: absolute imports, no keys it cannot read."""
    out = copy.deepcopy(data)  # tosca-parser rewrites parts of what it is given (outputs)
    out["imports"] = imports
    topo = dict(out.get("topology_template") or {})
    topo.pop("workflows", None)  # TOSCA 1.3 workflows: tosca-parser rejects them; checked here
    # Outputs: tosca-parser only knows operations written in the node template (not inherited
    # ones) when it checks get_operation_output; our own function check covers outputs.
    topo.pop("outputs", None)
    inputs = topo.get("inputs")
    if isinstance(inputs, dict):
        # TOSCA 1.3 parameter metadata (our secret marker) is unknown to tosca-parser.
        topo["inputs"] = {
            k: ({kk: vv for kk, vv in v.items() if kk != "metadata"} if isinstance(v, dict) else v)
            for k, v in inputs.items()
        }
    if topo:
        out["topology_template"] = topo
    return out


_NAMED = (
    (re.compile(r'[Nn]ode template "([^"]+)"'), ("topology_template", "node_templates")),
    (re.compile(r'of template "([^"]+)"'), ("topology_template", "node_templates")),
    (re.compile(r'template "([^"]+)"'), ("topology_template", "node_templates")),
    (re.compile(r'[Ii]nput "([^"]+)"'), ("topology_template", "inputs")),
    (re.compile(r'[Oo]utput "([^"]+)"'), ("topology_template", "outputs")),
    (re.compile(r'in "([^"]+)"'), ("topology_template", "node_templates")),
)


def _parser_issue(chk: _Checker, text: str) -> Issue:
    """Turn one tosca-parser error line into an Issue pointing at the right node and line."""
    message = text.strip()
    if ": " in message and message.split(": ", 1)[0].endswith(("Error", "Exception")):
        message = message.split(": ", 1)[1]
    message = message.strip()
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
        message = message[1:-1]  # KeyError reprs arrive quoted
    main = chk.main
    candidates = [(m.group(1), prefix) for pattern, prefix in _NAMED for m in pattern.finditer(message)]
    for name, prefix in candidates:
        if main is not None and main.lines.get((*prefix, name)):
            node = name
            line = main.line(*prefix, node)
            field_m = re.search(r'(?:unknown )?field "([^"]+)"', message)
            fld = None
            if field_m:
                fld = field_m.group(1).strip("[]'")
                sub = main.lines.get((*prefix, node, fld))
                line = sub or line
            return Issue(message, file=chk.entry, line=line, node=node, field=fld)
    m = re.search(r'Type "([^"]+)"', message) or re.search(r'type "([^"]+)"', message)
    if m and main is not None:
        for path, line in main.lines.items():
            if path and path[-1] == "type" and _value_at(main.data, path) == m.group(1):
                node = path[2] if len(path) > 2 and path[:2] == ("topology_template", "node_templates") else None
                return Issue(message, file=chk.entry, line=line, node=str(node) if node else None, field="type")
    return Issue(message, file=chk.entry)


def _value_at(data: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


def _check_type_cycles(chk: _Checker) -> None:
    """A type that derives from itself (``x.A -> x.B -> x.A``), named once per cycle: tosca-parser
    never finishes on one, and no chain of ours may loop."""
    reported: set[frozenset[str]] = set()
    for name, typedef in chk.registry.types.items():
        path, current = [name], typedef.defs.get("derived_from")
        while isinstance(current, str) and current in chk.registry.types:
            if current in path:
                cycle = [*path[path.index(current):], current]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    first = chk.registry.types[cycle[0]]
                    chk.issues.append(Issue(f"type {cycle[0]} derives from itself: {' -> '.join(cycle)}",
                                            file=first.display, line=first.line("derived_from"),
                                            field="derived_from"))
                break
            path.append(current)
            current = chk.registry.types[current].defs.get("derived_from")


def _run_tosca_parser(chk: _Checker, data: dict[str, Any], params: Mapping[str, Any]) -> None:
    """tosca-parser's findings, from a child process a time and memory limit end (untrusted work)."""
    try:
        lines = tosca_parser.report(data, params)
    except tosca_parser.ParserStalled as exc:
        chk.issues.append(Issue(f"{exc}; the template was refused", file=chk.entry))
        return
    seen: set[str] = set()
    for line in lines:
        issue = _parser_issue(chk, line)
        if issue.message not in seen:
            seen.add(issue.message)
            chk.issues.append(issue)


# -- inputs ---------------------------------------------------------------------------------


def _input_defs(raw: Any, doc: YamlDocument | None, prefix: tuple[str, ...]) -> dict[str, InputDef]:
    out: dict[str, InputDef] = {}
    for name, spec in (raw if isinstance(raw, dict) else {}).items():
        spec = spec if isinstance(spec, dict) else {}
        meta = spec.get("metadata") or {}
        secret = (
            bool(meta.get("hpcwaas.secret") or meta.get("secret")) or spec.get("type") == "hpcwaas.datatypes.Secret"
        )
        provided = meta.get("hpcwaas.provided")
        out[name] = InputDef(
            name=name,
            type=str(spec.get("type", "string")),
            default=spec.get("default"),
            required=bool(spec.get("required", True)) and provided is None,
            secret=secret,
            description=spec.get("description"),
            line=doc.line(*prefix, name) if doc else None,
            provided=str(provided) if provided is not None else None,
            constraints=_constraint_list(spec.get("constraints")),
        )
    return out


def _constraint_list(raw: Any) -> list[Any]:
    if raw is None:
        return []
    return list(raw) if isinstance(raw, list) else [raw]  # not a list: its one clause is refused below


def _check_constraints(chk: _Checker, defs: Mapping[str, InputDef], path: tuple[str, ...], field: str) -> None:
    """Constraint clauses the deployer cannot check are refused at validation, with their line."""
    for name, idef in defs.items():
        for clause in idef.constraints:
            problem = constraints.clause_problem(clause)
            if problem is not None:
                chk.add(f"input {name!r}: {problem}", *path, name, "constraints", field=f"{field}.{name}.constraints")


#: Values the engine gives to workflow inputs declared with ``metadata: {hpcwaas.provided: <name>}``.
PROVIDED_INPUTS = ("run_id", "deployment_id")


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce_input(spec: InputDef, value: Any) -> Any:
    """Convert a value given on the command line (a string) to the input's declared type."""
    if not isinstance(value, str) or spec.type in ("string", "hpcwaas.datatypes.Secret"):
        return value
    try:
        if spec.type == "integer":
            return int(value)
        if spec.type == "float":
            return float(value)
        if spec.type == "boolean":
            low = value.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(value)
        if spec.type in ("list", "map"):
            return yaml.safe_load(value)
    except (ValueError, yaml.YAMLError) as exc:
        shown = "the value given" if spec.secret else repr(value)  # a secret is never echoed
        raise InputError(f"input {spec.name!r} must be a {spec.type}, got {shown}", name=spec.name) from exc
    return value


def resolve_inputs(decls: Mapping[str, InputDef], given: Mapping[str, Any], *, what: str = "input") -> dict[str, Any]:
    """Declared inputs with defaults applied and types coerced; unknown or missing ones refused."""
    unknown = sorted(set(given) - set(decls))
    if unknown:
        raise InputError(
            f"unknown {what} {unknown[0]!r}; declared: {', '.join(sorted(decls)) or 'none'}", name=unknown[0]
        )
    out: dict[str, Any] = {}
    for name, spec in decls.items():
        if name in given:
            out[name] = coerce_input(spec, given[name])
            broken = constraints.violation(spec.constraints, out[name])
            if broken is not None:
                shown = "the value given" if spec.secret else repr(out[name])
                raise InputError(f"{what} {name!r} {broken}, not {shown}", name=name)
        elif spec.default is not None:
            out[name] = spec.default
        elif spec.mandatory:
            raise InputError(
                f"required {what} {name!r} is missing",
                name=name,
                hint=f"pass it with -i {name}=VALUE or in an inputs file",
            )
        else:
            out[name] = None
    return out


# -- types, properties, interfaces ----------------------------------------------------------


def _merged(chain: list[TypeDef], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in reversed(chain):
        section = t.defs.get(key) or {}
        if isinstance(section, dict):
            out.update(section)
    return out


def _datatype_defaults(registry: Registry, type_name: str, value: Any) -> Any:
    if not isinstance(value, dict) or function_name(value):
        return value
    props = _merged(registry.chain(type_name), "properties")
    filled = dict(value)
    for pname, pdef in props.items():
        if pname not in filled and isinstance(pdef, dict) and "default" in pdef:
            filled[pname] = pdef["default"]
    return filled


def _properties(registry: Registry, chain: list[TypeDef], given: dict[str, Any]) -> dict[str, Any]:
    defs = _merged(chain, "properties")
    out: dict[str, Any] = {}
    for name, pdef in defs.items():
        pdef = pdef if isinstance(pdef, dict) else {}
        if name in given:
            out[name] = _datatype_defaults(registry, str(pdef.get("type", "")), given[name])
        elif "default" in pdef:
            out[name] = _datatype_defaults(registry, str(pdef.get("type", "")), pdef["default"])
        else:
            out[name] = None  # declared but unset: get_property gives null, as TOSCA says
    for name, value in given.items():
        out.setdefault(name, value)
    return out


def _implementation(
    chk: _Checker,
    raw: Any,
    base_dir: Path,
    root: Path,
    artifacts: dict[str, ArtifactDef],
    where: dict[str, Any],
) -> Implementation | None:
    """Resolve an operation's implementation to an artifact type and files."""
    from deployer.executors import registry as executors

    if raw is None:
        return None
    timeout: float | None = None
    deps: list[Any] = []
    primary = raw
    if isinstance(raw, dict):
        primary = raw.get("primary")
        deps = list(raw.get("dependencies") or [])
        t = raw.get("timeout")
        timeout = float(t) if isinstance(t, int | float) else None
    artifact_type: str | None = None
    file: str | None = None
    if isinstance(primary, dict):
        artifact_type = primary.get("type")
        file = primary.get("file")
    elif isinstance(primary, str):
        if primary in artifacts:
            art = artifacts[primary]
            artifact_type, file = art.type, art.file
            base_dir = art.path.parent
            file = art.path.name
        else:
            file = primary
    if file is None and primary is not None:
        chk.add("operation implementation needs a file or artifact name", **where)
        return None
    if artifact_type is None and file is not None:
        artifact_type = _BY_EXTENSION.get(Path(file).suffix.lower())
    if artifact_type is None:
        chk.add(f"cannot tell how to run implementation {file!r}: give it a type or a .yml playbook", **where)
        return None
    needs_file = executors.needs_file(artifact_type)
    if needs_file is None:
        supported = ", ".join(executors.supported())
        chk.add(f"no executor for implementation type {artifact_type} (supported: {supported})", **where)
        return None
    path: Path | None = None
    if file is not None and needs_file:
        try:
            path = resolve_inside(
                base_dir, file, what="implementation", root=root, file=where.get("file"), line=where.get("line")
            )
            if not path.is_relative_to(root):
                raise TemplateError(Issue(f"implementation {file!r} points outside the package", **where))
        except TemplateError as exc:
            chk.issues.extend(exc.issues)
            return None
        if not path.is_file():
            chk.add(f"implementation file {file!r} does not exist", **where)
            return None
    dep_paths: list[Path] = []
    for dep in deps:
        name = dep.get("file") if isinstance(dep, dict) else dep
        if not isinstance(name, str):
            continue
        dpath = (base_dir / name).resolve()
        if not dpath.is_relative_to(root) or not dpath.exists():
            chk.add(f"implementation dependency {name!r} does not exist in the package", **where)
            continue
        dep_paths.append(dpath)
    return Implementation(artifact_type, file, path, tuple(dep_paths), timeout)


def _operations(
    chk: _Checker,
    layers: list[tuple[dict[str, Any], Path, Path, str, YamlDocument | None, tuple[str | int, ...]]],
    artifacts: dict[str, ArtifactDef],
    node: str,
) -> dict[str, OperationDef]:
    """Merge interface operations along the type chain (root first) and the template."""
    merged: dict[str, dict[str, Any]] = {}
    for interfaces, base_dir, root, display, doc, prefix in layers:
        if not isinstance(interfaces, dict):
            continue
        for iname, idef in interfaces.items():
            if not isinstance(idef, dict):
                continue
            ops = dict(idef.get("operations") or {})
            ops.update({k: v for k, v in idef.items() if k not in _INTERFACE_KEYS})
            raw_inputs = idef.get("inputs")
            iface_inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
            for oname, odef in ops.items():
                key = f"{iname}.{oname}"
                cur = merged.setdefault(key, {"implementation": None, "inputs": {}, "outputs": {}})
                cur["inputs"].update({k: v for k, v in iface_inputs.items() if not _is_definition(v)})
                line = None
                if doc is not None:
                    line = (
                        doc.line(*prefix, iname, "operations", oname)
                        if "operations" in idef
                        else doc.line(*prefix, iname, oname)
                    )
                cur.update(file=display, line=line)
                if isinstance(odef, str):
                    cur["implementation"] = (odef, base_dir, root)
                elif isinstance(odef, dict):
                    if odef.get("implementation") is not None:
                        cur["implementation"] = (odef["implementation"], base_dir, root)
                    cur["inputs"].update({k: v for k, v in (odef.get("inputs") or {}).items() if not _is_definition(v)})
                    # Type-level input *definitions* carry defaults: use them unless assigned.
                    for k, v in (odef.get("inputs") or {}).items():
                        if _is_definition(v) and "default" in v:
                            cur["inputs"].setdefault(k, v["default"])
                    cur["outputs"].update(odef.get("outputs") or {})
    out: dict[str, OperationDef] = {}
    for key, cur in merged.items():
        iname, oname = key.split(".", 1)
        impl = None
        if cur["implementation"] is not None:
            raw, base_dir, root = cur["implementation"]
            impl = _implementation(
                chk,
                raw,
                base_dir,
                root,
                artifacts,
                {"file": cur.get("file"), "line": cur.get("line"), "node": node, "field": f"interfaces.{key}"},
            )
        out[key] = OperationDef(iname, oname, impl, cur["inputs"], cur["outputs"], cur.get("file"), cur.get("line"))
    return out


def _is_definition(value: Any) -> bool:
    # A type-level operation input may be a parameter definition ({type: ..., default: ...}).
    return isinstance(value, dict) and "type" in value and function_name(value) is None


def _artifacts(chk: _Checker, chain: list[TypeDef], raw_tpl: dict[str, Any], name: str) -> dict[str, ArtifactDef]:
    layers: list[tuple[dict[str, Any], Path, Path, str, int | None, tuple[str | int, ...]]] = []
    for t in reversed(chain):
        arts = t.defs.get("artifacts") or {}
        layers.append((arts, t.base_dir, t.root, t.display, t.line("artifacts"), (t.kind, t.name, "artifacts")))
    main_prefix = ("topology_template", "node_templates", name, "artifacts")
    layers.append(
        (
            raw_tpl.get("artifacts") or {},
            chk.package.entry.parent,
            chk.package.root,
            chk.entry,
            chk.main.line(*main_prefix) if chk.main else None,
            main_prefix,
        )
    )
    out: dict[str, ArtifactDef] = {}
    for arts, base_dir, root, display, _line, prefix in layers:
        if not isinstance(arts, dict):
            continue
        for aname, adef in arts.items():
            file = adef.get("file") if isinstance(adef, dict) else adef
            atype = adef.get("type", "tosca.artifacts.File") if isinstance(adef, dict) else "tosca.artifacts.File"
            line = chk.main.line(*prefix, aname) if chk.main is not None and display == chk.entry else _line
            if not isinstance(file, str):
                chk.add(
                    f"artifact {aname!r} needs a file", node=name, field=f"artifacts.{aname}", file=display, line=line
                )
                continue
            try:
                path = resolve_inside(base_dir, file, what=f"artifact {aname!r}", root=root, file=display, line=line)
                if not path.is_relative_to(root):
                    raise TemplateError(
                        Issue(f"artifact {aname!r} points outside the package", file=display, line=line)
                    )
            except TemplateError as exc:
                chk.issues.extend(exc.issues)
                continue
            if not path.is_file():
                chk.add(
                    f"artifact file {file!r} does not exist",
                    node=name,
                    field=f"artifacts.{aname}",
                    file=display,
                    line=line,
                )
                continue
            out[aname] = ArtifactDef(
                aname, str(atype), file, path, adef.get("deploy_path") if isinstance(adef, dict) else None
            )
    return out


def _requirement_defs(chain: list[TypeDef]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in reversed(chain):
        for item in t.defs.get("requirements") or []:
            if isinstance(item, dict):
                for rname, rdef in item.items():
                    out[rname] = rdef if isinstance(rdef, dict) else {"node": rdef}
    return out


def _rel_type_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])
    return None


def _build_nodes(chk: _Checker, topo_raw: dict[str, Any]) -> dict[str, NodeTemplate]:
    reg = chk.registry
    raw_nodes = topo_raw.get("node_templates") or {}
    rel_templates = topo_raw.get("relationship_templates") or {}
    nodes: dict[str, NodeTemplate] = {}
    for name, tpl in raw_nodes.items():
        prefix = ("topology_template", "node_templates", name)
        line = chk.main.line(*prefix) if chk.main else None
        tpl = tpl if isinstance(tpl, dict) else {}
        chain = reg.chain(str(tpl.get("type")))
        if not chain or chain[0].kind != "node_types":
            chk.add(f"unknown node type {tpl.get('type')!r}", *prefix, "type", node=name, field="type")
            continue
        artifacts = _artifacts(chk, chain, tpl, name)
        layers: list[tuple[dict[str, Any], Path, Path, str, YamlDocument | None, tuple[str | int, ...]]] = [
            (t.defs.get("interfaces") or {}, t.base_dir, t.root, t.display, t.doc, (t.kind, t.name, "interfaces"))
            for t in reversed(chain)
        ]
        layers.append(
            (
                tpl.get("interfaces") or {},
                chk.package.entry.parent,
                chk.package.root,
                chk.entry,
                chk.main,
                (*prefix, "interfaces"),
            )
        )
        ops = _operations(chk, layers, artifacts, name)
        attrs = {
            k: (v.get("default") if isinstance(v, dict) else None) for k, v in _merged(chain, "attributes").items()
        }
        attrs.update(tosca_name=name, tosca_id=name)
        caps: dict[str, dict[str, Any]] = {}
        for cname, cdef in _merged(chain, "capabilities").items():
            ctype = _rel_type_name(cdef) or ""
            cprops = {
                k: v["default"]
                for k, v in _merged(reg.chain(ctype), "properties").items()
                if isinstance(v, dict) and "default" in v
            }
            cprops.update((cdef.get("properties") or {}) if isinstance(cdef, dict) else {})
            caps[cname] = cprops
        for cname, cval in (tpl.get("capabilities") or {}).items():
            caps.setdefault(cname, {}).update((cval or {}).get("properties") or {})
        reqdefs = _requirement_defs(chain)
        requirements: list[RequirementDef] = []
        for i, item in enumerate(tpl.get("requirements") or []):
            if not isinstance(item, dict) or len(item) != 1:
                chk.add(
                    "each requirement must be a one-key map",
                    *prefix,
                    "requirements",
                    i,
                    node=name,
                    field="requirements",
                )
                continue
            rname, rval = next(iter(item.items()))
            rline = chk.main.line(*prefix, "requirements", i) if chk.main else None
            target = rval if isinstance(rval, str) else (rval or {}).get("node")
            rel_spec = None if isinstance(rval, str) else (rval or {}).get("relationship")
            if rel_spec is None:
                rel_spec = (reqdefs.get(rname) or {}).get("relationship")
            rel_props: dict[str, Any] = {}
            rel_ifaces: dict[str, Any] = {}
            if isinstance(rel_spec, str) and rel_spec in rel_templates:
                rt = rel_templates[rel_spec] or {}
                rel_name = str(rt.get("type"))
                rel_props = dict(rt.get("properties") or {})
                rel_ifaces = rt.get("interfaces") or {}
            else:
                rel_name = _rel_type_name(rel_spec) or DEPENDS_ON
                if isinstance(rel_spec, dict):
                    rel_props = dict(rel_spec.get("properties") or {})
                    rel_ifaces = rel_spec.get("interfaces") or {}
            if not isinstance(target, str):
                chk.add(
                    f"requirement {rname!r} must name a node template (abstract requirements are not supported)",
                    line=rline,
                    node=name,
                    field=f"requirements.{rname}",
                )
                continue
            if target not in raw_nodes:
                chk.add(
                    f"requirement {rname!r} targets unknown node template {target!r}",
                    line=rline,
                    node=name,
                    field=f"requirements.{rname}",
                )
                continue
            rchain = reg.chain(rel_name)
            if not rchain or rchain[0].kind != "relationship_types":
                chk.add(f"unknown relationship type {rel_name!r}", line=rline, node=name, field=f"requirements.{rname}")
                continue
            rlayers: list[tuple[dict[str, Any], Path, Path, str, YamlDocument | None, tuple[str | int, ...]]] = [
                (t.defs.get("interfaces") or {}, t.base_dir, t.root, t.display, t.doc, (t.kind, t.name, "interfaces"))
                for t in reversed(rchain)
            ]
            rlayers.append((rel_ifaces, chk.package.entry.parent, chk.package.root, chk.entry, None, ()))
            rops = _operations(chk, rlayers, artifacts, name)
            rprops = _properties(reg, rchain, rel_props)
            requirements.append(
                RequirementDef(rname, target, rel_name, tuple(t.name for t in rchain), rops, rprops, rline)
            )
        nodes[name] = NodeTemplate(
            name=name,
            type=chain[0].name,
            chain=tuple(t.name for t in chain),
            properties=_properties(reg, chain, dict(tpl.get("properties") or {})),
            attributes=attrs,
            capabilities=caps,
            requirements=requirements,
            operations=ops,
            artifacts=artifacts,
            file=chk.entry,
            line=line,
        )
    return nodes


def find_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """A dependency cycle (as a node list ending where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in edges.get(n, []):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in edges:
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def _check_functions(chk: _Checker, topo: Topology, inputs: Mapping[str, Any]) -> None:
    ev = Evaluator(topo, inputs)
    for node in topo.nodes.values():
        for pname, value in node.properties.items():
            _check_one(
                chk,
                ev,
                value,
                Context(node=node.name, field=f"properties.{pname}"),
                ("topology_template", "node_templates", node.name, "properties", pname),
            )
        for op in node.operations.values():
            for iname, value in op.inputs.items():
                _check_one(
                    chk,
                    ev,
                    value,
                    Context(node=node.name, field=f"{op.key}.inputs.{iname}"),
                    (),
                    file=op.file,
                    line=op.line,
                )
        for req in node.requirements:
            for op in req.operations.values():
                for iname, value in op.inputs.items():
                    _check_one(
                        chk,
                        ev,
                        value,
                        Context(
                            node=node.name,
                            source=node.name,
                            target=req.target,
                            requirement=req,
                            field=f"requirements.{req.name}.{op.key}.inputs.{iname}",
                        ),
                        (),
                        file=op.file,
                        line=op.line or req.line,
                    )
    for oname, spec in topo.outputs.items():
        value = spec.get("value") if isinstance(spec, dict) else spec
        _check_one(
            chk,
            ev,
            value,
            Context(node=f"outputs.{oname}", field="value"),
            ("topology_template", "outputs", oname),
            output=True,
        )


def _check_one(
    chk: _Checker,
    ev: Evaluator,
    value: Any,
    ctx: Context,
    path: tuple[str | int, ...],
    *,
    file: str | None = None,
    line: int | None = None,
    output: bool = False,
) -> None:
    try:
        if output:
            # Outputs are evaluated outside any node: SELF is meaningless there.
            ev.evaluate(value, Context(node=next(iter(ev.topology.nodes), ""), field=ctx.field))
        else:
            ev.evaluate(value, ctx)
    except FunctionError as exc:
        if line is None and chk.main is not None and path:
            line = chk.main.line(*path)
        node = ctx.node
        chk.issues.append(Issue(exc.message, file=file or chk.entry, line=line, node=node, field=ctx.field))
    except (KeyError, TypeError, ValueError) as exc:
        chk.issues.append(
            Issue(f"cannot evaluate: {exc}", file=file or chk.entry, line=line, node=ctx.node, field=ctx.field)
        )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _workflows(
    chk: _Checker, raw: Any, nodes: dict[str, NodeTemplate], inputs: dict[str, Any], topo: Topology
) -> dict[str, WorkflowDef]:
    out: dict[str, WorkflowDef] = {}
    if not raw:
        return out
    if not isinstance(raw, dict):
        chk.add("workflows must be a map", "topology_template", "workflows", field="workflows")
        return out
    names = set(raw) | {"install", "uninstall"}
    states = {s.value for s in NodeState}
    for wname, wdef in raw.items():
        base = ("topology_template", "workflows", wname)
        if not isinstance(wdef, dict):
            chk.add("a workflow must be a map", *base, field=f"workflows.{wname}")
            continue
        winputs = _input_defs(wdef.get("inputs"), chk.main, (*base, "inputs"))
        _check_constraints(chk, winputs, (*base, "inputs"), f"workflows.{wname}.inputs")
        for iname, idef in winputs.items():
            if idef.provided is not None and idef.provided not in PROVIDED_INPUTS:
                chk.add(
                    f"hpcwaas.provided must be one of {', '.join(PROVIDED_INPUTS)}, not {idef.provided!r}",
                    *base,
                    "inputs",
                    iname,
                    field=f"workflows.{wname}.inputs.{iname}",
                )
        steps: dict[str, WorkflowStep] = {}
        raw_steps = wdef.get("steps") or {}
        for sname, sdef in raw_steps.items():
            spath = (*base, "steps", sname)
            where = f"workflows.{wname}.steps.{sname}"
            sdef = sdef if isinstance(sdef, dict) else {}
            target = sdef.get("target")
            if target not in nodes:
                chk.add(f"step target {target!r} is not a node template", *spath, "target", field=where)
                continue
            acts = sdef.get("activities") or []
            if not isinstance(acts, list) or not acts:
                chk.add("a step needs a list of activities", *spath, field=where)
                continue
            for i, act in enumerate(acts):
                apath = (*spath, "activities", i)
                if not isinstance(act, dict) or len(act) != 1:
                    chk.add(
                        "an activity is a one-key map (call_operation, set_state, delegate or inline)",
                        *apath,
                        field=where,
                    )
                    continue
                kind, arg = next(iter(act.items()))
                if kind == "call_operation":
                    opname = arg.get("operation") if isinstance(arg, dict) else arg
                    if opname not in nodes[target].operations:
                        have = ", ".join(sorted(nodes[target].operations)) or "none"
                        chk.add(
                            f"node {target!r} has no operation {opname!r} (has: {have})",
                            *apath,
                            node=target,
                            field=where,
                        )
                    elif isinstance(arg, dict):
                        for iname, ival in (arg.get("inputs") or {}).items():
                            _check_wf_value(chk, topo, inputs, winputs, ival, target, f"{where}.inputs.{iname}", apath)
                elif kind == "set_state":
                    if arg not in states:
                        chk.add(f"unknown state {arg!r} (use one of {', '.join(sorted(states))})", *apath, field=where)
                elif kind in ("delegate", "inline"):
                    ref = arg.get("workflow") if isinstance(arg, dict) else arg
                    if kind == "delegate" and ref not in ("install", "uninstall"):
                        chk.add(
                            f"delegate supports the install and uninstall workflows, not {ref!r}", *apath, field=where
                        )
                    if kind == "inline" and (ref not in names or ref == wname):
                        chk.add(f"inline workflow {ref!r} is not defined (or is this workflow)", *apath, field=where)
                else:
                    chk.add(
                        f"unknown activity {kind!r} (use call_operation, set_state, delegate or inline)",
                        *apath,
                        field=where,
                    )
            steps[sname] = WorkflowStep(
                sname,
                target,
                acts,
                _as_list(sdef.get("on_success")),
                _as_list(sdef.get("on_failure")),
                sdef.get("target_relationship"),
                chk.main.line(*spath) if chk.main else None,
            )
        for step in steps.values():
            for nxt in step.on_success + step.on_failure:
                if nxt not in raw_steps:
                    chk.add(
                        f"step {step.name!r} links to unknown step {nxt!r}",
                        *base,
                        "steps",
                        step.name,
                        field=f"workflows.{wname}.steps.{step.name}",
                    )
        cycle = find_cycle({s.name: [n for n in s.on_success if n in steps] for s in steps.values()})
        if cycle:
            chk.add(f"workflow steps form a cycle: {' -> '.join(cycle)}", *base, "steps", field=f"workflows.{wname}")
        out[wname] = WorkflowDef(wname, wdef.get("description"), winputs, steps)
    return out


def _check_wf_value(
    chk: _Checker,
    topo: Topology,
    inputs: Mapping[str, Any],
    winputs: dict[str, InputDef],
    value: Any,
    target: str,
    field: str,
    path: tuple[str | int, ...],
) -> None:
    extra = {k: (v.default if v.default is not None else f"<{k}>") for k, v in winputs.items()}
    ev = Evaluator(topo, inputs, extra_inputs=extra)
    _check_one(chk, ev, value, Context(node=target, field=field), path)


# -- entry point ----------------------------------------------------------------------------


def load_topology(
    package: Package, inputs: Mapping[str, Any] | None = None, *, check_inputs: bool = True
) -> tuple[Topology, dict[str, Any]]:
    """Validate ``package`` and build its topology; return it with the resolved inputs.

    Raises :class:`TemplateError` listing every problem found, or :class:`InputError` when an
    input is missing or of the wrong type.
    """
    chk = _Checker(package)
    main = read_yaml(package.entry, root=package.root)
    chk.main = main
    data = main.data
    if not isinstance(data, dict):
        raise TemplateError(Issue("a service template must be a YAML map", file=chk.entry, line=1))
    version = data.get("tosca_definitions_version")
    if version not in SUPPORTED_VERSIONS:
        chk.add(
            f"tosca_definitions_version must be one of {', '.join(SUPPORTED_VERSIONS)}, got {version!r}",
            "tosca_definitions_version",
            field="tosca_definitions_version",
        )
        chk.fail_if_issues()
    topo_raw = data.get("topology_template")
    if not isinstance(topo_raw, dict) or not topo_raw.get("node_templates"):
        chk.add(
            "the template has no topology_template.node_templates to deploy",
            "topology_template",
            field="topology_template",
        )
        chk.fail_if_issues()
    assert isinstance(topo_raw, dict)

    # Types: normative, then the hpcwaas profile, then imports in order, then the template itself.
    chk.registry.add_document(_normative_cached(), "TOSCA normative types", Path("/"))
    profile = read_yaml(PROFILE_PATH)
    chk.registry.add_document(profile, "hpcwaas profile", TOSCA_DIR)
    imported = _import_files(chk, main, chk.entry, package.root, {package.entry})
    chk.fail_if_issues()
    for doc, display, _path in imported:
        chk.registry.add_document(doc, display, package.root)
    chk.registry.add_document(main, chk.entry, package.root)
    _check_type_cycles(chk)
    chk.fail_if_issues()

    decls = _input_defs(topo_raw.get("inputs"), main, ("topology_template", "inputs"))
    _check_constraints(chk, decls, ("topology_template", "inputs"), "inputs")
    chk.fail_if_issues()
    given = dict(inputs or {})
    resolved: dict[str, Any] = {}
    if check_inputs:
        try:
            resolved = resolve_inputs(decls, given)
        except InputError as exc:
            line = main.line("topology_template", "inputs", exc.name) if exc.name else None
            chk.issues.append(Issue(exc.message, file=chk.entry, line=line, field=f"inputs.{exc.name}"))
            chk.fail_if_issues()
    else:
        resolved = {k: given.get(k, v.default) for k, v in decls.items()}

    # tosca-parser: types, properties, fields. Imports are handed over as absolute paths.
    # Only the template's own imports: tosca-parser follows nested ones relative to each file.
    own = {
        (package.entry.parent / str(i.get("file") if isinstance(i, dict) else i)).resolve()
        for i in (data.get("imports") or [])
    }
    direct = [str(PROFILE_PATH)] + [str(p) for _d, _s, p in imported if p in own]
    parser_params = {k: v for k, v in resolved.items() if v is not None}
    _run_tosca_parser(chk, _parser_dict(data, direct), parser_params)
    chk.fail_if_issues()

    nodes = _build_nodes(chk, topo_raw)
    chk.fail_if_issues()
    edges = {n.name: [r.target for r in n.requirements] for n in nodes.values()}
    cycle = find_cycle(edges)
    if cycle:
        chk.add(
            f"requirements form a dependency cycle: {' -> '.join(cycle)}",
            "topology_template",
            "node_templates",
            cycle[0],
            node=cycle[0],
            field="requirements",
        )
        chk.fail_if_issues()

    outputs = dict(topo_raw.get("outputs") or {})
    topology = Topology(
        source=str(package.source),
        root=package.root,
        entry=chk.entry,
        description=data.get("description"),
        inputs=decls,
        nodes=nodes,
        outputs=outputs,
        workflows={},
    )
    static_inputs = {k: (v if v is not None else f"<{k}>") for k, v in resolved.items()}
    _check_functions(chk, topology, static_inputs)
    topology.workflows = _workflows(chk, topo_raw.get("workflows"), nodes, static_inputs, topology)
    chk.fail_if_issues()
    return topology, resolved


def validate(source: str | Path, inputs: Mapping[str, Any] | None = None, *, check_inputs: bool = True) -> Topology:
    """Validate a template file, folder or CSAR; raise TemplateError or InputError when invalid."""
    from deployer.loader import open_package

    with open_package(source) as package:
        topology, _ = load_topology(package, inputs, check_inputs=check_inputs)
    return topology


__all__ = ["ANSIBLE", "Registry", "coerce_input", "find_cycle", "load_topology", "resolve_inputs", "validate"]
