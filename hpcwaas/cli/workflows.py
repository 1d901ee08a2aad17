"""Workflows, deployments and executions: register, deploy, run (with a live view), follow, cancel."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hpcwaas.cli._common import State, client, console, emit, errors, fields, table

workflows = typer.Typer(help="The workflow registry.", no_args_is_help=True)
deployments = typer.Typer(help="Deployments of workflows on sites.", no_args_is_help=True)
executions = typer.Typer(help="Your executions.", no_args_is_help=True)
TERMINAL = {"completed", "failed", "cancelled"}
WF_COLS = ["name", "latest_version", "visibility", "description", "updated_at"]
DEP_COLS = ["id", "workflow_id", "state", "login", "error", "updated_at"]
EXEC_COLS = ["id", "workflow_name", "state", "login", "created_at", "finished_at", "error"]


def log_line(line: dict[str, Any]) -> Text:
    """A log line for a terminal: its time dimmed, errors in red."""
    style = "red" if line.get("level") == "error" else ""
    return Text.assemble((line["at"][11:19], "dim"), " ", (line["text"], style))


def shown(line: dict[str, Any], verbose: bool = False) -> bool:
    """Whether a log line is worth showing (debug lines are the engine's bookkeeping)."""
    return verbose or line.get("level") != "debug"


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _typed(name: str, kind: str, raw: str) -> Any:
    """``raw`` as the declared TOSCA type says (a string stays a string, even ``123``)."""
    try:
        if kind == "integer":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "boolean":
            return _BOOLEANS[raw.strip().lower()]
        if kind in ("list", "map"):
            value = json.loads(raw)
            if not isinstance(value, list if kind == "list" else dict):
                raise ValueError(f"not a JSON {'list' if kind == 'list' else 'object'}")
            return value
    except (ValueError, KeyError) as exc:
        example = {"integer": "42", "float": "0.5", "boolean": "true or false", "list": '\'["a", "b"]\'',
                   "map": '\'{"k": "v"}\''}[kind]
        raise typer.BadParameter(f"input {name!r} is {'an' if kind == 'integer' else 'a'} {kind}; {raw!r} is not "
                                 f"one ({exc})", param_hint=f"-i {name}=... (e.g. {name}={example})") from exc
    return raw


def parse_inputs(items: list[str], declared: dict[str, Any] | None = None) -> dict[str, Any]:
    """``-i key=value`` pairs, converted by the workflow's declared input types; without
    declarations, values are JSON when they parse (numbers, booleans, lists), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: use key=value", param_hint="-i")
        if declared is not None:
            if key not in declared:
                known = ", ".join(sorted(n for n, s in declared.items() if not s.get("provided"))) or "none"
                raise typer.BadParameter(f"the workflow has no input {key!r}; its inputs are: {known}",
                                         param_hint="-i")
            out[key] = _typed(key, str(declared[key].get("type") or "string"), raw)
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def declared_inputs(api: Any, ref: str, tosca_workflow: str | None = None,
                    version: int | None = None) -> dict[str, Any] | None:
    """The inputs a workflow declares (its deploy inputs, or a TOSCA workflow's), as registered."""
    described = api.get_workflow(ref)
    chosen = described.get("latest") or {}
    if version is not None:
        chosen = next((v for v in api.workflow_versions(ref) if v.get("number") == version), chosen)
    if tosca_workflow is None:
        return dict(chosen.get("inputs") or {})
    found = (chosen.get("workflows") or {}).get(tosca_workflow)
    return dict(found.get("inputs") or {}) if isinstance(found, dict) else None


@workflows.command("register")
def register(
    name: str,
    path: Path = typer.Option(None, "--path", help="A folder (under a registry root of the gateway)."),
    git: str = typer.Option(None, "--git", help="A local git repository path or file:// URL."),
    ref: str = typer.Option("HEAD", help="Git branch, tag or commit."),
    subpath: str = typer.Option("", help="Folder of the workflow in the repository."),
    csar: Path = typer.Option(None, "--csar", exists=True, dir_okay=False, help="A CSAR (zip) to upload."),
    description: str = typer.Option(None),
    restricted: bool = typer.Option(False, help="Visible only to you, admins and --user/--group."),
    user: list[str] = typer.Option([], "--user", help="A user who may see it (repeat)."),
    group: list[str] = typer.Option([], "--group", help="A group that may see it (repeat)."),
) -> None:
    """Register a workflow (a new version when its content changed)."""
    if sum(x is not None for x in (path, git, csar)) != 1:
        raise typer.BadParameter("give exactly one of --path, --git or --csar")
    visibility = {"mode": "restricted" if restricted else "public", "users": user, "groups": group}
    with errors(), client() as api:
        if csar is not None:
            out = api.upload_workflow(name, csar.read_bytes(), csar.name, description)
        elif git is not None:
            out = api.register_workflow(name, {"kind": "git", "url": git, "ref": ref, "subpath": subpath},
                                        description, visibility)
        else:
            out = api.register_workflow(name, {"kind": "folder", "path": str(path.resolve())}, description,
                                        visibility)

    def human(d: dict[str, Any]) -> None:
        v = d["version"]
        verb = "registered" if d["created"] else "already registered as"
        console.print(f"{verb} [bold]{d['workflow']['name']}[/bold] version {v['number']} ({v['digest'][:24]})")
        console.print(f"  inputs: {', '.join(v['inputs']) or 'none'}; workflows: {', '.join(v['workflows'])}")

    emit(out, human)


@workflows.command("list")
def list_workflows() -> None:
    """The workflows you may see."""
    with errors(), client() as api:
        emit(api.list_workflows(), lambda d: table(d, WF_COLS))


@workflows.command("show")
def show(ref: str) -> None:
    """A workflow, its latest version's inputs, workflows and steps."""
    with errors(), client() as api:
        out = api.get_workflow(ref)

    def human(d: dict[str, Any]) -> None:
        fields(d, ["name", "description", "visibility", "owner_id", "latest_version"])
        latest = d.get("latest") or {}
        for wf, spec in latest.get("workflows", {}).items():
            console.print(f"[bold]{wf}[/bold]: steps {', '.join(spec['steps'])}")
            for name, inp in spec.get("inputs", {}).items():
                req = "required" if inp["required"] else f"default {inp['default']!r}"
                console.print(f"  -i {name}=<{inp['type']}>  ({req}) {inp.get('description') or ''}")

    emit(out, human)


@workflows.command("deploy")
def deploy(
    ref: str,
    site: str = typer.Option(..., "--site", "-s"),
    key: str = typer.Option(..., "--key", "-k", help="Your SSH key id (the install runs as its login)."),
    inputs: list[str] = typer.Option([], "-i", help="key=value (repeat)."),
    version: int = typer.Option(None),
    follow: bool = typer.Option(True, help="Follow the deployment until it ends."),
) -> None:
    """Deploy a workflow to a site (image build, transfer, software install)."""
    with errors(), client() as api:
        out = api.deploy(ref, site, key, parse_inputs(inputs, declared_inputs(api, ref, version=version)), version)
        if follow and not State.json_output:
            console.print(f"deployment [bold]{out['id']}[/bold] accepted; following...")
            after = 0
            while True:
                page = api.deployment_logs(out["id"], after, wait=20)
                for line in page["lines"]:
                    if shown(line):
                        console.print(log_line(line))
                after = page["next_seq"]
                out = api.get_deployment(out["id"])
                if out["state"] in ("deployed", "failed", "undeployed") and not page["lines"]:
                    break
    emit(out, lambda d: console.print(f"deployment {d['id']}: [bold]{d['state']}[/bold]"
                                      + (f" ({d['error']})" if d.get("error") else "")))


@deployments.command("list")
def list_deployments(workflow: str = typer.Option(None)) -> None:
    """Deployments of the workflows you may see."""
    with errors(), client() as api:
        emit(api.list_deployments(workflow), lambda d: table(d, DEP_COLS))


@deployments.command("status")
def deployment_status(deployment_id: str) -> None:
    """A deployment, with its nodes' states."""
    with errors(), client() as api:
        emit(api.get_deployment(deployment_id), fields)


@deployments.command("undeploy")
def undeploy(deployment_id: str) -> None:
    """Run the uninstall workflow."""
    with errors(), client() as api:
        emit(api.undeploy(deployment_id), lambda d: console.print(f"undeploying {d['id']}"))


def _steps_table(execution: dict[str, Any]) -> Table:
    t = Table(title=f"execution {execution['id']}: {execution['state']}", title_justify="left")
    for col in ("step", "state", "job", "pipeline run", "time"):
        t.add_column(col, overflow="fold")
    for step in execution.get("steps", []):
        took = ""
        if step.get("started_at"):
            took = f"{(step.get('finished_at') or time.time()) - step['started_at']:.0f} s"
        t.add_row(step["name"], step["state"], step.get("job_id") or "", step.get("pipeline_run_id") or "", took)
    return t


def follow(api: Any, execution_id: str) -> dict[str, Any]:
    """Live view: the steps table, with log lines printed above it as they come."""
    execution = api.get_execution(execution_id)
    after = 0
    with Live(_steps_table(execution), console=console, refresh_per_second=4) as live:
        while True:
            page = api.execution_logs(execution_id, after, wait=2)
            for line in page["lines"]:
                if shown(line):
                    live.console.print(log_line(line))
            after = page["next_seq"]
            execution = api.get_execution(execution_id)
            live.update(_steps_table(execution))
            if execution["state"] in TERMINAL and page["finished"]:
                return dict(execution)


def _print_result(d: dict[str, Any]) -> None:
    color = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(d["state"], "white")
    console.print(f"execution {d['id']}: [bold {color}]{d['state']}[/bold {color}]")
    if d.get("error"):
        console.print(f"  error: {d['error']}", markup=False)
    for name, value in (d.get("outputs") or {}).items():
        console.print(f"  {name}: {value}", markup=False, highlight=False)


def run(
    ref: str,
    key: str = typer.Option(..., "--key", "-k", help="Your SSH key id (the job runs as its login)."),
    inputs: list[str] = typer.Option([], "-i", help="key=value (repeat)."),
    site: str = typer.Option(None, "--site", "-s", help="Run on this site's deployment."),
    deployment: str = typer.Option(None),
    follow_it: bool = typer.Option(False, "--follow", "-f", help="Show the steps live until the end."),
) -> None:
    """Invoke a deployed workflow with inputs."""
    with errors(), client() as api:
        typed = parse_inputs(inputs, declared_inputs(api, ref, "execute"))
        out = api.invoke(ref, key, typed, deployment=deployment, site=site)
        if follow_it and not State.json_output:
            out = follow(api, out["id"])
    if follow_it and not State.json_output:
        _print_result(out)
        if out["state"] != "completed":
            raise typer.Exit(1)
        return
    emit(out, lambda d: console.print(f"execution [bold]{d['id']}[/bold] accepted ({d['state']}); "
                                      f"follow it with: waas executions logs {d['id']} --follow"))


# Terminal states other than completed (gateway.persistence.models.ExecutionState).
UNSUCCESSFUL = frozenset({"failed", "cancelled"})


@executions.command("list")
def list_executions(state: str = typer.Option(None), workflow: str = typer.Option(None),
                    limit: int = typer.Option(50)) -> None:
    """Your executions, newest first."""
    with errors(), client() as api:
        emit(api.list_executions(state=state, workflow=workflow, limit=limit), lambda d: table(d, EXEC_COLS))


@executions.command("status")
def status(execution_id: str) -> None:
    """State, steps (with Slurm job and pipeline run ids), timings and outputs.

    Exits 1 when the execution failed or was cancelled (0 when it completed or is still going),
    so a script can test it."""
    with errors(), client() as api:
        out = api.get_execution(execution_id)

    def human(d: dict[str, Any]) -> None:
        console.print(_steps_table(d))
        _print_result(d)

    emit(out, human)
    if out.get("state") in UNSUCCESSFUL:
        raise typer.Exit(1)


@executions.command("logs")
def logs(execution_id: str, follow_it: bool = typer.Option(False, "--follow", "-f"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Also the engine's bookkeeping lines.")) -> None:
    """The execution's log (live with --follow)."""
    with errors(), client() as api:
        if follow_it:
            for line in api.follow_execution(execution_id):
                if shown(line, verbose):
                    console.print(log_line(line))
            return
        page = api.execution_logs(execution_id)

    def human(d: dict[str, Any]) -> None:
        for line in d["lines"]:
            if shown(line, verbose):
                console.print(log_line(line))

    emit(page, human)


@executions.command("cancel")
def cancel(execution_id: str) -> None:
    """Cancel: Slurm jobs cancelled, pipeline runs stopped."""
    with errors(), client() as api:
        emit(api.cancel_execution(execution_id), lambda d: console.print(f"execution {d['id']}: {d['state']}"))


@executions.command("resume")
def resume(execution_id: str, follow_it: bool = typer.Option(False, "--follow", "-f",
                                                            help="Show the steps live until the end.")) -> None:
    """Resume a failed or cancelled execution from the step that failed (what finished is reused)."""
    with errors(), client() as api:
        out = api.resume_execution(execution_id)
        if follow_it and not State.json_output:
            out = follow(api, out["id"])
    emit(out, lambda d: console.print(f"execution {d['id']}: {d['state']}"))


@executions.command("provenance")
def provenance(execution_id: str) -> None:
    """Who ran which workflow version and image, its Slurm jobs and pipeline runs, datasets in and
    out (W3C PROV-JSON with --json)."""
    with errors(), client() as api:
        emit(api.execution_provenance(execution_id), show_provenance)


def show_provenance(doc: dict[str, Any]) -> None:
    """A PROV-JSON document of an execution as a few lines."""
    def bare(name: str) -> str:
        return unquote(name.removeprefix("hpcwaas:"))

    def value(v: Any) -> Any:
        return v.get("$") if isinstance(v, dict) else v

    activities, entities = doc.get("activity", {}), doc.get("entity", {})
    for name, act in activities.items():
        if name.count("/") == 1:  # the execution itself; its steps are execution/<id>/<step>
            agent = next((bare(a["prov:agent"]) for a in doc.get("wasAssociatedWith", {}).values()
                          if a.get("prov:activity") == name), "?")
            console.print(f"[bold]{bare(name)}[/bold] ({value(act.get('hpcwaas:state'))}) by {agent.split('/')[-1]} "
                          f"on {value(act.get('hpcwaas:site'))}")
    for name, ent in entities.items():
        if name.startswith("hpcwaas:workflow/"):
            console.print(f"  workflow {bare(name)} ({value(ent.get('hpcwaas:digest'))})")
        elif name.startswith("hpcwaas:image/"):
            console.print(f"  image {bare(name).removeprefix('image/')}")
    for name, act in activities.items():
        if name.count("/") == 2:
            ran = [f"Slurm job {value(act['hpcwaas:slurm_job_id'])}" if "hpcwaas:slurm_job_id" in act else "",
                   f"pipeline run {value(act['hpcwaas:pipeline_run_id'])}" if "hpcwaas:pipeline_run_id" in act else ""]
            console.print(f"  step {bare(name.rsplit('/', 1)[1])}: {value(act.get('hpcwaas:state'))} "
                          f"{' '.join(r for r in ran if r)}".rstrip())
    made = {g["prov:entity"] for g in doc.get("wasGeneratedBy", {}).values()}
    sources: dict[str, list[str]] = {}
    for d in doc.get("wasDerivedFrom", {}).values():
        sources.setdefault(d["prov:generatedEntity"], []).append(bare(d["prov:usedEntity"]))
    for name, ent in entities.items():
        if name.startswith("hpcwaas:dataset/"):
            direction = "out" if name in made else "in "
            checksum = value(ent.get("hpcwaas:sha256"))
            line = f"  {direction} {bare(name)}" + (f" sha256 {checksum}" if checksum else "")
            if sources.get(name):
                line += f", derived from {', '.join(sources[name])}"
            console.print(line)


@executions.command("outputs")
def outputs(execution_id: str) -> None:
    """The execution's outputs (catalogue ids of results, ...)."""
    with errors(), client() as api:
        emit(api.execution_outputs(execution_id), fields)
