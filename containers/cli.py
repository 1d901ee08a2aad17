"""``waas images``: build, status, logs, list, show, pull, rm. A thin adapter over
:class:`containers.client.ImagesClient`: it parses, calls, and prints (with progress)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from containers.client import ImagesClient
from hpcwaas.cli._common import client, console, emit, err_console, errors, fields, table

app = typer.Typer(help="HPC-ready container images (Apptainer SIF), cached by content.", no_args_is_help=True)
BUILD_COLS = ["id", "name", "state", "cached", "image_id", "created_at", "message"]
IMAGE_COLS = ["id", "name", "size", "digest", "created_at"]


def _show_build(build: dict[str, Any]) -> None:
    fields(build, ["id", "name", "state", "cached", "leader_id", "image_id", "attempts", "message", "created_at",
                   "finished_at"])


@app.command("build")
def build(
    spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="The step's image.yaml (or a Dockerfile)."),
    step_dir: Path = typer.Option(None, "--step-dir", file_okay=False, help="Where the copied files are."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the build until it ends."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the whole build log."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the image is in the store."),
) -> None:
    """Build an image from a step's spec; a spec already built returns the cached image at once."""
    with errors(), client() as api:
        images = ImagesClient(api)
        record = images.build_step(spec, step_dir, force=force)
        if record["cached"]:
            err_console.print(f"[green]cached[/green]: image {record['image_id']} was already built")
        elif record.get("leader_id"):
            err_console.print(f"joined build {record['leader_id']}, which builds the same image")
        if wait and record["state"] not in ("succeeded", "failed"):
            record = _follow(images, record["id"], follow)
    emit(record, _show_build)
    if record["state"] == "failed":
        raise typer.Exit(1)


def _follow(images: ImagesClient, build_id: str, stream: bool) -> dict[str, Any]:
    last = ""

    def on_log(text: str) -> None:
        nonlocal last
        if stream:
            console.out(text, end="", highlight=False)
        lines = [x for x in text.splitlines() if x.strip()]
        if lines:
            last = lines[-1][:100]

    if stream:
        return images.wait(build_id, on_log=on_log)
    with console.status("building…") as spinner:
        def update(text: str) -> None:
            on_log(text)
            spinner.update(f"building: {escape(last)}")

        return images.wait(build_id, on_log=update)


@app.command("builder")
def builder() -> None:
    """Whether images can be built here; if not, why and what an operator does about it."""
    with errors(), client() as api:
        emit(ImagesClient(api).builder(), lambda d: fields(d, ["available", "version", "arch", "reason", "hint"]))


@app.command("status")
def status(build_id: str) -> None:
    """A build's state and message."""
    with errors(), client() as api:
        emit(ImagesClient(api).status(build_id), _show_build)


@app.command("logs")
def logs(build_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Until the build ends.")) -> None:
    """A build's log (secrets are redacted before it is written)."""
    with errors(), client() as api:
        images = ImagesClient(api)
        if follow:
            images.wait(build_id, on_log=lambda t: console.out(t, end="", highlight=False))
            return
        text, _, _ = images.logs(build_id)
        console.out(text, end="", highlight=False)


@app.command("list")
def list_images(builds: bool = typer.Option(False, "--builds", help="List your builds instead.")) -> None:
    """Images you asked for (or your builds)."""
    with errors(), client() as api:
        images = ImagesClient(api)
        if builds:
            emit(images.builds(), lambda d: table(d, BUILD_COLS))
        else:
            emit(images.list(), lambda d: table(d, IMAGE_COLS))


@app.command("show")
def show(image_id: str, definition: bool = typer.Option(False, "--definition", help="Print the definition.")) -> None:
    """Inspect an image: labels, size, digest (and its definition)."""
    with errors(), client() as api:
        data = ImagesClient(api).show(image_id)
    if definition:
        console.out(data["definition"], highlight=False)
        return
    emit(data, lambda d: fields(d, ["id", "name", "size", "digest", "labels", "builder", "created_at", "download"]))


@app.command("pull")
def pull(image_id: str, dest: Path = typer.Option(None, "--output", "-o", help="Where to write the SIF.")) -> None:
    """Download an image; an interrupted download resumes (HTTP Range)."""
    dest = dest or Path(f"{image_id[:12]}.sif")
    with errors(), client() as api, Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task(f"pulling {image_id[:12]}", total=None)
        ImagesClient(api).download(image_id, dest,
                                   on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    emit({"image_id": image_id, "path": str(dest), "size": dest.stat().st_size}, fields)


@app.command("rm")
def remove(image_id: str) -> None:
    """Delete an image (its owner or an admin)."""
    with errors(), client() as api:
        ImagesClient(api).delete(image_id)
    console.print(f"deleted image {image_id}")
