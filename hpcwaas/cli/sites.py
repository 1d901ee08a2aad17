"""Sites, SSH keys and ad-hoc jobs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.prompt import Confirm

from hpcwaas.cli._common import client, console, emit, err_console, errors, fields, table

sites = typer.Typer(help="HPC sites.", no_args_is_help=True)
keys = typer.Typer(help="Your SSH keys (private halves stay in Vault).", no_args_is_help=True)
jobs = typer.Typer(help="Ad-hoc batch jobs on a site, with your key.", no_args_is_help=True)
SITE_COLS = ["name", "login_host", "port", "scheduler", "partitions", "work_dir", "host_key_fingerprint",
             "ssh_certificates"]
KEY_COLS = ["id", "name", "key_type", "fingerprint", "login", "origin", "created_at", "last_used_at"]


@sites.command("list")
def list_sites() -> None:
    """List sites."""
    with errors(), client() as api:
        emit(api.list_sites(), lambda d: table(d, SITE_COLS))


@sites.command("show")
def show_site(name: str) -> None:
    """Show a site."""
    with errors(), client() as api:
        emit(api.get_site(name), fields)


@sites.command("scan")
def scan(host: str, port: int = typer.Option(22)) -> None:
    """Show the host keys a login node offers, with fingerprints."""
    with errors(), client() as api:
        emit(api.scan_host_keys(host, port), lambda d: table(d, ["key_type", "fingerprint"]))


@sites.command("add")
def add(
    name: str,
    host: str = typer.Option(..., help="Login node host name or address."),
    port: int = typer.Option(22),
    partition: list[str] = typer.Option([], "--partition", "-p", help="Partition (repeat)."),
    work_dir: str = typer.Option("/home/{login}/hpcwaas", help="Work folder; {login} is the site user."),
    fingerprint: str = typer.Option(None, help="Expected host key fingerprint (SHA256:...); else asks."),
    description: str = typer.Option(None),
    certificates: bool = typer.Option(False, "--certificates", help="Runs log in with per-run certificates "
                                      "from the gateway's SSH CA (the site's sshd trusts it)."),
) -> None:
    """Register a site: fetch its host key, confirm the fingerprint, pin it."""
    with errors(), client() as api:
        offered = api.scan_host_keys(host, port)
        key = next((k for k in offered if k["key_type"] == "ssh-ed25519"), offered[0])
        if fingerprint:
            match = next((k for k in offered if k["fingerprint"] == fingerprint), None)
            if match is None:
                err_console.print(f"[red]error:[/red] {host}:{port} does not offer a key with {fingerprint}; "
                                  f"it offers {', '.join(k['fingerprint'] for k in offered)}")
                raise typer.Exit(1)
            key = match
        else:
            console.print(f"{host}:{port} offers {key['key_type']} [bold]{key['fingerprint']}[/bold]")
            if not sys.stdin.isatty() or not Confirm.ask("Does this match the fingerprint the site published?"):
                err_console.print("not registered: confirm the fingerprint with --fingerprint SHA256:...")
                raise typer.Exit(1)
        site = api.register_site(name=name, login_host=host, port=port, partitions=partition, work_dir=work_dir,
                                 host_key=key["key"], description=description, ssh_certificates=certificates)
    emit(site, fields)


@sites.command("set")
def set_site(
    name: str,
    certificates: bool = typer.Option(None, "--certificates/--no-certificates",
                                      help="Per-run certificates from the gateway's SSH CA, or stored keys."),
    description: str = typer.Option(None),
) -> None:
    """Change a site (admin)."""
    changes = {k: v for k, v in {"ssh_certificates": certificates, "description": description}.items()
               if v is not None}
    if not changes:
        err_console.print("nothing to change: give --certificates/--no-certificates or --description")
        raise typer.Exit(2)
    with errors(), client() as api:
        emit(api.update_site(name, **changes), fields)


@sites.command("rm")
def remove(name: str) -> None:
    """Remove a site."""
    with errors(), client() as api:
        api.delete_site(name)
    console.print(f"removed site {name}")


@sites.command("info")
def info(name: str, key: str = typer.Option(..., "--key", "-k", help="Your SSH key id."),
         login: str = typer.Option(None)) -> None:
    """Scheduler version and partitions, as your site user sees them."""
    with errors(), client() as api:
        out = api.site_info(name, key, login)

    def human(d: dict[str, object]) -> None:
        console.print(f"{d['site']} as {d['login']}: {d['scheduler_version']}")
        table(d["partitions"], ["name", "default", "available", "time_limit", "nodes"])  # type: ignore[arg-type]

    emit(out, human)


@keys.command("create")
def create_key(
    name: str = typer.Option(None),
    type: str = typer.Option("ed25519", help="ed25519 or rsa."),
    login: str = typer.Option(None, help="Your user name on the sites (default login)."),
) -> None:
    """Generate a key pair; prints the public key to install on the site."""
    with errors(), client() as api:
        out = api.create_ssh_key(name, type, login)
    emit(out, lambda d: console.print(
        f"key [bold]{d['id']}[/bold] ({d['fingerprint']}). Append this line to ~/.ssh/authorized_keys on the site:\n"
        f"{d['public_key']}"))


@keys.command("import")
def import_key(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Private key file."),
    name: str = typer.Option(None),
    login: str = typer.Option(None),
    passphrase: bool = typer.Option(False, "--passphrase", help="Ask for the key's passphrase."),
) -> None:
    """Import an existing private key into Vault."""
    secret = typer.prompt("passphrase", hide_input=True) if passphrase else None
    with errors(), client() as api:
        out = api.import_ssh_key(path.read_text(), name, secret, login)
    emit(out, fields)


@keys.command("list")
def list_keys() -> None:
    """List your keys."""
    with errors(), client() as api:
        emit(api.list_ssh_keys(), lambda d: table(d, KEY_COLS))


@keys.command("show")
def show_key(key_id: str) -> None:
    """Show one of your keys."""
    with errors(), client() as api:
        emit(api.get_ssh_key(key_id), fields)


@keys.command("rm")
def remove_key(key_id: str) -> None:
    """Delete a key (and its private half in Vault)."""
    with errors(), client() as api:
        api.delete_ssh_key(key_id)
    console.print(f"deleted key {key_id}")


@keys.command("check")
def check_key(key_id: str, site: str = typer.Option(..., "--site", "-s"), login: str = typer.Option(None)) -> None:
    """Log in to a site with the key; prints the remote user and the scheduler version."""
    with errors(), client() as api:
        out = api.check_ssh_key(key_id, site, login)
    emit(out, lambda d: console.print(f"[green]ok[/green]: logged in to {d['site']} as {d['remote_user']} "
                                      f"({d['scheduler_version']}, host key {d['host_key_fingerprint']})"))


def _print_job(d: dict[str, object]) -> None:
    console.print(f"job {d['job_id']} on {d['site']} as {d['login']}: [bold]{d['state']}[/bold]"
                  + (f" exit {d['exit_code']}" if d.get("exit_code") is not None else ""))
    if d.get("stdout_tail"):
        console.print("[dim]--- stdout ---[/dim]")
        console.print(d["stdout_tail"], end="", markup=False, highlight=False)
    if d.get("stderr_tail"):
        console.print("[dim]--- stderr ---[/dim]")
        console.print(d["stderr_tail"], end="", markup=False, highlight=False)


@jobs.command("submit")
def submit(
    site: str,
    script: Path = typer.Argument(..., exists=True, dir_okay=False, help="Batch script (#! first line)."),
    key: str = typer.Option(..., "--key", "-k", help="Your SSH key id."),
    login: str = typer.Option(None),
    partition: str = typer.Option(None),
    time_limit: str = typer.Option(None, "--time"),
    wait: bool = typer.Option(False, help="Wait for the end and print the output."),
) -> None:
    """Submit a batch script to a site."""
    with errors(), client() as api:
        if wait:
            with console.status(f"job running on {site}..."):
                out = api.submit_job(site, key, script.read_text(), login=login, wait=True, partition=partition,
                                     time_limit=time_limit)
        else:
            out = api.submit_job(site, key, script.read_text(), login=login, partition=partition,
                                 time_limit=time_limit)
    emit(out, _print_job)


@jobs.command("status")
def job_status(site: str, job_id: str, key: str = typer.Option(..., "--key", "-k"),
               login: str = typer.Option(None)) -> None:
    """A job's state and output."""
    with errors(), client() as api:
        emit(api.job_status(site, job_id, key, login), _print_job)


@jobs.command("cancel")
def job_cancel(site: str, job_id: str, key: str = typer.Option(..., "--key", "-k"),
               login: str = typer.Option(None)) -> None:
    """Cancel a job."""
    with errors(), client() as api:
        emit(api.cancel_job(site, job_id, key, login), _print_job)
