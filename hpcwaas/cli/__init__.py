"""The ``waas`` command line: a thin adapter over the REST API and the components' own CLIs."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import typer.main

from hpcwaas.cli import admin, sites, users, workflows
from hpcwaas.cli._common import State, console, emit, fields, load_config, save_config

app = typer.Typer(
    help="hpcwaas: HPC Workflows as a Service.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold tokens
)
config = typer.Typer(help="Where the gateway is and which token to use.", no_args_is_help=True)


@app.callback()
def _root(json_output: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    State.json_output = json_output


@config.command("set")
def config_set(url: str = typer.Option(None, help="Gateway URL."),
               token: str = typer.Option(None, help="API token (use '-' to read it from stdin).")) -> None:
    """Save the gateway URL and/or token (file mode 0600)."""
    values = {}
    if url:
        values["url"] = url
    if token:
        values["token"] = input().strip() if token == "-" else token
    path = save_config(values)
    console.print(f"saved {', '.join(values) or 'nothing'} to {path}")


@config.command("show")
def config_show() -> None:
    """Show the configuration (the token is masked)."""
    cfg = load_config()
    shown = {"url": cfg.get("url"), "token": (cfg["token"][:11] + "...") if cfg.get("token") else None}
    emit(shown, fields)


app.add_typer(config, name="config")
app.add_typer(admin.app, name="admin")
app.add_typer(users.users, name="users")
app.add_typer(users.tokens, name="tokens")
app.add_typer(sites.sites, name="sites")
app.add_typer(sites.keys, name="ssh-keys")
app.add_typer(sites.jobs, name="jobs")
app.add_typer(workflows.workflows, name="workflows")
app.add_typer(workflows.deployments, name="deployments")
app.add_typer(workflows.executions, name="executions")
app.command("run")(workflows.run)
app.command("worker")(admin.worker)

# Component CLIs, mounted when their package (and its extra) is installed.
for module_name, attr, name, help_text in (
    ("hpcwaas.stack.cli", "app", "stack", "The local development stack."),
    ("deployer.cli", "app", "tosca", "TOSCA topologies: validate, plan, deploy, run."),
    ("data_logistics.cli", "app", "pipelines", "Data-logistics pipelines: stage data in and out, move images."),
    ("catalogue.cli", "app", "catalogue", "The data catalogue: search, show, add, edit, rm, import, export."),
    ("containers.cli", "app", "images", "Container images: build, status, logs, list, show, pull, rm."),
):
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        continue
    app.add_typer(getattr(module, attr), name=name, help=help_text)


def hoist_json(args: list[str]) -> list[str]:
    """``waas executions list --json`` means ``waas --json executions list``: the flag belongs to
    the root, but people type it last. Left in place for commands with a ``--json`` of their own
    (``waas stack status --json``) and after ``--``."""
    if "--json" not in args:
        return args
    end = args.index("--") if "--" in args else len(args)
    if "--json" not in args[:end]:
        return args
    command: Any = typer.main.get_command(app)  # typer's own click; walked by duck typing
    for word in args[:end]:
        commands = getattr(command, "commands", None)
        if commands is None:
            break
        command = commands.get(word, command)
    if any("--json" in getattr(param, "opts", ()) for param in command.params):
        return args
    return ["--json", *[a for i, a in enumerate(args) if a != "--json" or i >= end]]


def main() -> None:
    """Entry point of ``waas``."""
    app(args=hoist_json(sys.argv[1:]))
