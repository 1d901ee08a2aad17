"""``waas tosca``: validate, plan, deploy, undeploy, outputs and run, with per-node progress.

Thin adapter: it parses arguments, calls :mod:`deployer.api`, and prints. Also runnable as
``python -m deployer``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from deployer import api
from deployer.engine import Event
from deployer.errors import TemplateError
from hpcwaas.errors import HpcwaasError

app = typer.Typer(
    help="Validate, plan, deploy and run TOSCA service templates.", no_args_is_help=True, add_completion=False
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

TEMPLATE = typer.Argument(..., help="A service template: YAML file, folder or CSAR zip.")
STATE = typer.Option(Path(".waas-state"), "--state", "-s", help="Folder holding the deployment state.")
INPUT = typer.Option([], "--input", "-i", help="An input as NAME=VALUE (repeatable).")
INPUTS_FILE = typer.Option(None, "--inputs", help="A YAML file of inputs.")
WORKERS = typer.Option(4, "--workers", "-w", min=1, max=64, help="Nodes deployed in parallel.")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run without repeating completed work.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Stream operation output.")
DEP_ID = typer.Option(None, "--id", help="Deployment id (default: the state folder's name).")
NO_WAIT = typer.Option(
    False, "--no-wait", help="Return as soon as only batch jobs or service runs are left to wait for; "
    "continue later with --resume --no-wait (exit code 3 while the run waits)."
)
WAITING_EXIT = 3


def _waiting(engine: api.Engine) -> None:
    run = engine.record.last_run()
    if run is not None and run.status == "waiting":
        when = max(0.0, (run.wake_at or time.time()) - time.time())
        out.print(f"[yellow]waiting[/]: run {escape(run.id)} has operations running; check again in {when:.0f} s "
                  "with --resume --no-wait")
        raise typer.Exit(WAITING_EXIT)
    if run is not None and run.status == "failed":
        err.print(f"[bold red]error[/]: {escape(run.error or 'the run failed')}")
        raise typer.Exit(1)


def _inputs(pairs: list[str], file: Path | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise typer.BadParameter("the inputs file must hold a YAML map", param_hint="--inputs")
        values.update(loaded or {})
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        values[name] = value
    return values


def _fail(exc: HpcwaasError) -> None:
    if isinstance(exc, TemplateError):
        err.print(f"[bold red]invalid template[/]: {len(exc.issues)} problem(s)")
        for issue in exc.issues:
            err.print(f"  [red]✗[/] {escape(str(issue))}")
    else:
        err.print(f"[bold red]error[/]: {escape(exc.message)}")
    if exc.hint:
        err.print(f"  [yellow]hint[/]: {escape(exc.hint)}")
    raise typer.Exit(2 if isinstance(exc, TemplateError) else 1)


class Progress:
    """Per-node progress lines from engine events (thread-safe)."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def __call__(self, ev: Event) -> None:
        with self.lock:
            t = f"[dim]{time.monotonic() - self.started:7.1f}s[/]"
            if ev.kind == "node_state":
                colour = {"started": "green", "deleted": "green", "error": "red"}.get(ev.state or "", "cyan")
                err.print(f"{t} [bold]{escape(ev.node or '')}[/] → [{colour}]{ev.state}[/]")
            elif ev.kind == "op_start":
                err.print(f"{t}   ▶ {escape(ev.node or '')} {escape(ev.op or '')}")
            elif ev.kind == "op_done":
                err.print(f"{t}   [green]✓[/] {escape(ev.node or '')} {escape(ev.op or '')} ({ev.seconds or 0:.1f} s)")
            elif ev.kind == "op_wait":
                err.print(f"{t}   [dim]… {escape(ev.node or '')} {escape(ev.op or '')}: {escape(ev.message)}[/]")
            elif ev.kind == "op_cancelled":
                err.print(f"{t}   [yellow]⊘ {escape(ev.node or '')} {escape(ev.op or '')} cancelled[/]")
            elif ev.kind == "op_skip":
                err.print(f"{t}   [dim]↷ {escape(ev.node or '')} {escape(ev.op or '')} already done[/]")
            elif ev.kind == "op_failed":
                err.print(f"{t}   [red]✗ {escape(ev.message)}[/]")
            elif ev.kind == "run":
                err.print(f"{t} [bold]{escape(ev.message)}[/]")
            elif ev.kind == "log" and (
                self.verbose or ev.message.startswith(("submitted job", "found job", "following job", "job "))
            ):
                err.print(f"{t}     [dim]{escape(ev.message)}[/]")


@app.command()
def validate(
    template: str = TEMPLATE,
    input: list[str] = INPUT,
    inputs: Path | None = INPUTS_FILE,
    no_inputs: bool = typer.Option(False, "--no-inputs", help="Do not require required inputs."),
) -> None:
    """Check a template: types, properties, functions, artifacts, cycles, workflows."""
    try:
        topology = api.validate_template(template, _inputs(input, inputs), check_inputs=not no_inputs)
    except HpcwaasError as exc:
        _fail(exc)
        return
    n_ops = sum(len([o for o in n.operations.values() if o.implementation]) for n in topology.nodes.values())
    out.print(
        f"[green]valid[/]: {len(topology.nodes)} nodes, {n_ops} operations, "
        f"workflows: {', '.join(['install', 'uninstall', *topology.workflows])}"
    )


@app.command()
def plan(
    template: str = TEMPLATE,
    input: list[str] = INPUT,
    inputs: Path | None = INPUTS_FILE,
    undeploy: bool = typer.Option(False, "--undeploy", help="Show the undeploy plan."),
) -> None:
    """Show what would run, in order and by parallel wave, without running it."""
    from deployer.plan import render

    try:
        p = api.make_plan(template, _inputs(input, inputs), undeploy=undeploy)
    except HpcwaasError as exc:
        _fail(exc)
        return
    for line in render(p):
        out.print(escape(line))
    out.print(f"{p.op_count} operations in {len(p.waves)} waves")


@app.command()
def deploy(
    template: str = TEMPLATE,
    state: Path = STATE,
    input: list[str] = INPUT,
    inputs: Path | None = INPUTS_FILE,
    workers: int = WORKERS,
    resume: bool = RESUME,
    verbose: bool = VERBOSE,
    deployment_id: str | None = DEP_ID,
    no_wait: bool = NO_WAIT,
) -> None:
    """Deploy a template (install workflow); --resume continues an interrupted deploy."""
    try:
        engine = api.deploy(
            template,
            state,
            deployment_id=deployment_id,
            inputs=_inputs(input, inputs),
            workers=workers,
            resume=resume,
            credentials=api.default_credentials(),
            on_event=Progress(verbose),
            blocking=not no_wait,
        )
    except HpcwaasError as exc:
        _fail(exc)
        return
    _waiting(engine)
    out.print(f"[green]deployed[/] {engine.deployment_id}: {engine.ops_run} operations run")


@app.command()
def undeploy(
    state: Path = STATE,
    template: str | None = typer.Option(None, "--template", "-t"),
    input: list[str] = INPUT,
    inputs: Path | None = INPUTS_FILE,
    workers: int = WORKERS,
    resume: bool = RESUME,
    verbose: bool = VERBOSE,
    no_wait: bool = NO_WAIT,
) -> None:
    """Undeploy (uninstall workflow), dependants first."""
    try:
        engine = api.undeploy(
            state,
            template,
            inputs=_inputs(input, inputs),
            workers=workers,
            resume=resume,
            credentials=api.default_credentials(),
            on_event=Progress(verbose),
            blocking=not no_wait,
        )
    except HpcwaasError as exc:
        _fail(exc)
        return
    _waiting(engine)
    out.print(f"[green]undeployed[/] {engine.deployment_id}")


@app.command()
def outputs(
    state: Path = STATE,
    template: str | None = typer.Option(None, "--template", "-t"),
    input: list[str] = INPUT,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print the topology outputs of a deployment."""
    try:
        values = api.outputs(state, template, inputs=_inputs(input, None))
    except HpcwaasError as exc:
        _fail(exc)
        return
    if as_json:
        out.print_json(json.dumps(values, default=str))
    else:
        for k, v in values.items():
            out.print(f"{escape(k)}: {escape(str(v))}")


@app.command()
def run(
    workflow: str = typer.Argument(..., help="Workflow name (install, uninstall, or one of the template's)."),
    state: Path = STATE,
    template: str | None = typer.Option(None, "--template", "-t"),
    input: list[str] = INPUT,
    workflow_input: list[str] = typer.Option([], "--wf-input", "-W", help="A workflow input NAME=VALUE."),
    workers: int = WORKERS,
    resume: bool = RESUME,
    verbose: bool = VERBOSE,
    no_wait: bool = NO_WAIT,
) -> None:
    """Run a workflow of a deployment with its own inputs."""
    try:
        engine = api.run_workflow(
            state,
            workflow,
            template,
            inputs=_inputs(input, None),
            workflow_inputs=_inputs(workflow_input, None),
            workers=workers,
            resume=resume,
            credentials=api.default_credentials(),
            on_event=Progress(verbose),
            blocking=not no_wait,
        )
    except HpcwaasError as exc:
        _fail(exc)
        return
    _waiting(engine)
    out.print(f"[green]workflow {escape(workflow)} done[/] ({engine.ops_run} operations run)")


@app.command()
def cancel(
    state: Path = STATE,
    template: str | None = typer.Option(None, "--template", "-t"),
    input: list[str] = INPUT,
    verbose: bool = VERBOSE,
) -> None:
    """Cancel the deployment's last run: scancel its batch jobs, cancel its pipeline runs."""
    try:
        run = api.cancel_run(state, template, inputs=_inputs(input, None), credentials=api.default_credentials(),
                             on_event=Progress(verbose))
    except HpcwaasError as exc:
        _fail(exc)
        return
    out.print(f"run {escape(run.id)} ({escape(run.workflow)}): {run.status}")


def main() -> None:
    """Entry point for ``python -m deployer``."""
    app(prog_name="waas tosca")


if __name__ == "__main__":
    main()
    sys.exit(0)
