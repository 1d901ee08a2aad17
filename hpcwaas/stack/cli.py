"""``python -m hpcwaas.stack``: up, down, status, info, authorize-key, env."""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hpcwaas.stack.base import REGISTRY
from hpcwaas.stack.manager import Stack, UpResult, resolve
from hpcwaas.stack.process import StackError
from hpcwaas.stack.site_users import SITE_USERS, authorize_key

app = typer.Typer(
    help="Run the local stack: OpenBao, an sshd login node, Slurm with accounting, PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

OnlyOption = Annotated[
    str | None,
    typer.Option("--only", help=f"Comma-separated services ({', '.join(REGISTRY)}; `openbao` = the flavour)."),
]
STATE_STYLE = {"running": "green", "ready": "green", "stopped": "dim", "stale": "yellow", "unhealthy": "red"}


def _fail(exc: StackError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc.message}")
    if exc.hint:
        err.print(f"[yellow]next:[/yellow] {exc.hint}")
    return typer.Exit(1)


def _split(only: str | None) -> list[str] | None:
    return [x for x in only.split(",") if x.strip()] if only else None


@app.command()
def up(
    demo: Annotated[bool, typer.Option("--demo", help="Persistent raft OpenBao instead of the dev one.")] = False,
    only: OnlyOption = None,
) -> None:
    """Start the stack (idempotent: running, healthy services are reused)."""
    stack = Stack()
    try:
        names = resolve(_split(only), demo)
    except StackError as exc:
        raise _fail(exc) from exc
    pending = set(names)
    lock = threading.Lock()
    began = time.monotonic()

    with console.status("starting " + ", ".join(names)) as spinner:

        def on_done(result: UpResult) -> None:
            with lock:
                pending.discard(result.service)
                if result.error is not None:
                    console.print(f"[red]✗[/red] {result.service:<13} failed after {result.seconds:.1f}s")
                elif result.reused:
                    console.print(f"[green]✓[/green] {result.service:<13} already running ({result.seconds:.2f}s)")
                else:
                    console.print(f"[green]✓[/green] {result.service:<13} started in {result.seconds:.1f}s")
                if pending:
                    spinner.update("waiting for " + ", ".join(sorted(pending)))

        try:
            results = stack.up(names, on_done=on_done)
        except StackError as exc:
            raise _fail(exc) from exc

    failed = [r for r in results if r.error is not None]
    for result in failed:
        assert result.error is not None
        err.print(f"[red]{result.service}:[/red] {result.error.message}")
        if result.error.hint:
            err.print(f"[yellow]next:[/yellow] {result.error.hint}")
    console.print(f"stack {'partly up' if failed else 'up'} in {time.monotonic() - began:.1f}s; "
                  f"details in {stack.info_file}")
    if failed:
        raise typer.Exit(1)


@app.command()
def down(only: OnlyOption = None) -> None:
    """Stop the stack's processes (state is kept: raft data, databases, host key)."""
    stack = Stack()
    try:
        names = resolve(_split(only)) if only else None
        began = time.monotonic()
        stopped = stack.down(names)
    except StackError as exc:
        raise _fail(exc) from exc
    for service, processes in stopped.items():
        if processes:
            console.print(f"[green]■[/green] {service:<13} stopped {', '.join(processes)}")
    console.print(f"stack down in {time.monotonic() - began:.1f}s")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Show every process of the stack: state, pid and address."""
    rows = Stack().status()
    if as_json:
        typer.echo(json.dumps([row.__dict__ for row in rows], indent=2))
        return
    table = Table(title="hpcwaas local stack")
    for column in ("service", "process", "state", "pid"):
        table.add_column(column, no_wrap=True)
    table.add_column("address", overflow="fold")
    for row in rows:
        style = STATE_STYLE.get(row.state, "")
        table.add_row(row.service, row.process, f"[{style}]{row.state}[/{style}]",
                      str(row.pid or "-"), row.address)
    console.print(table)


@app.command()
def info(as_json: Annotated[bool, typer.Option("--json", help="Print stack.json.")] = False) -> None:
    """What the stack offers (addresses, host key, users, secret file paths)."""
    try:
        data = Stack().info()
    except FileNotFoundError as exc:
        raise _fail(StackError(str(exc))) from exc
    if as_json:
        typer.echo(data.model_dump_json(indent=2))
    else:
        console.print_json(data.model_dump_json())


@app.command("authorize-key")
def authorize_key_cmd(
    user: Annotated[str, typer.Option("--user", help=f"Site user: {', '.join(SITE_USERS)}.")],
    public_key_file: Annotated[Path, typer.Option("--public-key-file", exists=True, dir_okay=False,
                                                  help="OpenSSH public key (one line).")],
) -> None:
    """Let a public key log in as a site user (appended once to its authorized_keys)."""
    try:
        added = authorize_key(user, public_key_file.read_text())
    except StackError as exc:
        raise _fail(exc) from exc
    console.print(f"{'authorised' if added else 'already authorised'}: {public_key_file} for {user}")


@app.command()
def env(demo: Annotated[bool, typer.Option("--demo", help="Point at the raft OpenBao.")] = False) -> None:
    """Print `export HPCWAAS_...=` lines for the gateway (eval "$(python -m hpcwaas.stack env)")."""
    stack = Stack()
    try:
        vault = stack.info().vault("raft" if demo else "dev")
    except (FileNotFoundError, LookupError) as exc:
        raise _fail(StackError(str(exc), hint="run `python -m hpcwaas.stack up`")) from exc
    values = {
        "HPCWAAS_STACK_DIR": str(stack.dir),
        "HPCWAAS_VAULT_ADDR": vault.addr,
        "HPCWAAS_VAULT_TOKEN_FILE": str(vault.gateway_token_file),
        "HPCWAAS_VAULT_MOUNT": vault.mount,
    }
    for key, value in values.items():
        typer.echo(f"export {key}={shlex.quote(value)}")


def main() -> None:
    """Entry point."""
    app()
