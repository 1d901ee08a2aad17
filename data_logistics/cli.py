"""``waas pipelines``: list pipelines, start a run with a live progress bar, status, logs, cancel.

A thin adapter over the gateway's ``/pipelines`` endpoints (URL and token from ``waas config``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

app = typer.Typer(help="Data-logistics pipelines (Airflow): stage data in and out, move images.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _gateway() -> httpx.Client:
    from hpcwaas.cli._common import load_config

    cfg = load_config()
    headers = {"Authorization": f"Bearer {cfg['token']}"} if cfg.get("token") else {}
    return httpx.Client(base_url=cfg["url"], headers=headers, timeout=60)


def _call(method: str, path: str, **kw: Any) -> Any:
    with _gateway() as http:
        try:
            resp = http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]error:[/red] the gateway does not answer: {exc}")
            raise typer.Exit(1) from None
    if resp.status_code >= 400:
        try:
            body = resp.json()["error"]
        except (ValueError, KeyError):
            body = {"message": resp.text[:500], "code": "http_error"}
        err.print(f"[red]error:[/red] {body.get('message')} [dim]({resp.status_code} {body.get('code')})[/dim]")
        if body.get("hint"):
            err.print(f"  [yellow]hint:[/yellow] {body['hint']}")
        raise typer.Exit(1)
    return resp.json()


def _json_wanted() -> bool:
    from hpcwaas.cli._common import State

    return State.json_output


def _show_run(run: dict[str, Any]) -> None:
    if _json_wanted():
        typer.echo(json.dumps(run, indent=2))
        return
    table = Table(show_header=False)
    for key in ("id", "pipeline", "state", "label", "source", "target", "dataset_id", "start_date", "end_date",
                "progress", "error", "registered_dataset", "registration_error"):
        if run.get(key) is not None:
            table.add_row(key, json.dumps(run[key]) if isinstance(run[key], dict) else str(run[key]))
    result = run.get("result") or {}
    for key in ("sha256", "size", "files", "resumed_from", "seconds"):
        if key in result:
            table.add_row(f"result.{key}", str(result[key]))
    console.print(table)


@app.command("list")
def list_pipelines() -> None:
    """The pipelines and what they read and write."""
    rows = _call("GET", "/pipelines")
    if _json_wanted():
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("pipeline", "reads", "writes", "schedule", "description")
    for p in rows:
        table.add_row(p["name"], ", ".join(p["source_kinds"]), ", ".join(p["target_kinds"]), p.get("schedule") or "-",
                      p["description"])
    console.print(table)


@app.command("runs")
def runs(pipeline: str = typer.Option(None, help="Only this pipeline.")) -> None:
    """Your runs, newest first."""
    rows = _call("GET", "/pipelines/runs", params={"pipeline": pipeline} if pipeline else None)
    if _json_wanted():
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "pipeline", "state", "source", "target", "started")
    for r in rows:
        table.add_row(r["id"], r["pipeline"], r["state"], json.dumps(r.get("source")), json.dumps(r.get("target")),
                      r.get("start_date") or "-")
    console.print(table)


def follow(pipeline: str, run_id: str, poll: float = 1.0) -> dict[str, Any]:
    """Poll a run with a live progress bar (bytes and files) until it ends."""
    columns = (TextColumn("[bold]{task.fields[phase]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("{task.fields[files]}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("run", total=None, phase="queued", files="")
        while True:
            run: dict[str, Any] = _call("GET", f"/pipelines/{pipeline}/runs/{run_id}")
            p = run.get("progress") or {}
            files = f"{p.get('files_done', 0)}/{p.get('files_total', '?')} files" if p else ""
            bar.update(task, total=p.get("bytes_total"), completed=p.get("bytes_done", 0),
                       phase=p.get("phase") if run["state"] == "running" and p else run["state"], files=files)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(poll)


@app.command("run")
def run(
    pipeline: str = typer.Argument(..., help="stage_in, stage_out, image_transfer, site_to_site or sync."),
    source: str = typer.Option(..., "--source", "-s", help="https://..., file:<path>, sftp://<site>/<path>, "
                                                            "dataset:<id>"),
    target: str = typer.Option(..., "--target", "-t", help="sftp://<site>/<path> or file:<path>"),
    key: str = typer.Option(..., "--key", "-k", help="Your SSH key id."),
    login: str = typer.Option(None, help="Site user (the key's default login otherwise)."),
    sha256: str = typer.Option(None, help="Expected checksum of a single-file source."),
    overwrite: bool = typer.Option(False, help="Replace an existing destination."),
    target_key: str = typer.Option(None, help="Another of your keys for the target site."),
    target_login: str = typer.Option(None),
    label: str = typer.Option(None),
    wait: bool = typer.Option(True, help="Follow the run with a progress bar until it ends."),
) -> None:
    """Start a run; by default follow it to the end (exit 1 if it fails)."""
    body = {"ssh_key": key, "login": login, "source": source, "target": target, "sha256": sha256,
            "overwrite": overwrite, "target_ssh_key": target_key, "target_login": target_login, "label": label}
    started = _call("POST", f"/pipelines/{pipeline}/runs", json={k: v for k, v in body.items() if v is not None})
    err.print(f"started {pipeline} run [bold]{started['id']}[/bold]")
    final = follow(pipeline, started["id"]) if wait else started
    _show_run(final)
    if final["state"] == "failed":
        raise typer.Exit(1)


@app.command("status")
def status(pipeline: str, run_id: str, watch: bool = typer.Option(False, help="Follow it until it ends.")) -> None:
    """A run's state, tasks, progress and result or error."""
    _show_run(follow(pipeline, run_id) if watch else _call("GET", f"/pipelines/{pipeline}/runs/{run_id}"))


@app.command("logs")
def logs(pipeline: str, run_id: str) -> None:
    """The run's task log."""
    run = _call("GET", f"/pipelines/{pipeline}/runs/{run_id}", params={"logs": "true"})
    for line in run.get("logs") or []:
        typer.echo(line)


@app.command("cancel")
def cancel(pipeline: str, run_id: str) -> None:
    """Stop a run (its unused single-use token is spent)."""
    _show_run(_call("DELETE", f"/pipelines/{pipeline}/runs/{run_id}"))
