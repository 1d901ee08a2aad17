"""``waas catalogue``: search, show, add, edit, rm, import and export datasets (over the REST API)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from catalogue.client import CatalogueClient
from hpcwaas.cli._common import State, client, console, emit, errors, fields, table

app = typer.Typer(help="The data catalogue: FAIR datasets and storage targets.", no_args_is_help=True)
targets = typer.Typer(help="Storage targets (site, protocol, base path).", no_args_is_help=True)
app.add_typer(targets, name="targets")
HIT_COLS = ["id", "title", "format", "site", "access", "owner", "modified_at"]
SHOW_KEYS = ["id", "title", "description", "location", "storage_target", "path", "protocol", "site", "format",
             "size_bytes", "checksum_sha256", "license", "creators", "keywords", "version", "access", "readers",
             "doi", "handle", "metadata", "owner", "created_at", "modified_at", "revision"]


def _fields_from_options(**options: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == []:
            continue
        if name == "creators":
            value = [dict(zip(("name", "orcid", "affiliation"), [p.strip() for p in c.split(";")], strict=False))
                     for c in value]
            value = [{k: v for k, v in c.items() if v} for c in value]
        if name == "metadata":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"not JSON ({exc.msg}); give an object, e.g. '{{\"instrument\": \"x\"}}'",
                                         param_hint="--metadata") from None
            if not isinstance(value, dict):
                raise typer.BadParameter("give a JSON object, e.g. '{\"instrument\": \"x\"}'",
                                         param_hint="--metadata")
        out[name] = value
    return out


@app.command("search")
def search(
    q: str = typer.Argument(..., help="Words to look for (all must match; prefixes match too)."),
    keyword: list[str] = typer.Option([], "--keyword", "-k", help="Has this keyword (repeat)."),
    format: str = typer.Option(None, help="Only this format."),
    site: str = typer.Option(None, help="Only on this site."),
    owner: str = typer.Option(None, help="Only this owner's."),
    access: str = typer.Option(None, help="public or restricted."),
    limit: int = typer.Option(20, help="How many."),
) -> None:
    """Full-text search over titles, descriptions and keywords."""
    with errors(), client() as api:
        page = CatalogueClient(api).search(q, keyword=keyword, format=format, site=site, owner=owner, access=access,
                                           limit=limit)
        emit(page, lambda d: table(d["items"], HIT_COLS))


@app.command("show")
def show(dataset_id: str, resolve: bool = typer.Option(True, help="Also show where it resolves to.")) -> None:
    """Show a dataset, and where pipelines will find it."""
    with errors(), client() as api:
        cat = CatalogueClient(api)
        data = cat.get(dataset_id)
        if data.get("storage_target"):
            data["storage_target"] = data["storage_target"]["name"]
        if resolve and (data.get("location") or data.get("storage_target")):
            data["resolved"] = cat.resolve(dataset_id)
        emit(data, lambda d: fields(d, [*SHOW_KEYS, *(["resolved"] if "resolved" in d else [])]))


def _dataset_options(
    title: str | None, description: str | None, location: str | None, target: str | None, path: str | None,
    format: str | None, size: int | None, checksum: str | None, license: str | None, keyword: list[str],
    creator: list[str], version: str | None, access: str | None, reader: list[str], doi: str | None,
    handle: str | None, metadata: str | None,
) -> dict[str, Any]:
    return _fields_from_options(
        title=title, description=description, location=location, storage_target=target, path=path, format=format,
        size_bytes=size, checksum_sha256=checksum, license=license, keywords=keyword, creators=creator,
        version=version, access=access, readers=reader, doi=doi, handle=handle, metadata=metadata,
    )


TITLE = typer.Option(None, help="Title.")
DESCRIPTION = typer.Option(None, help="Description.")
LOCATION = typer.Option(None, help="sftp://site/path, https://host/path or file:///path.")
TARGET = typer.Option(None, "--target", help="Storage target (with --path).")
PATH = typer.Option(None, help="Path under the storage target's base path.")
FORMAT = typer.Option(None, help="Format or media type.")
SIZE = typer.Option(None, help="Size in bytes.")
CHECKSUM = typer.Option(None, help="SHA-256 (hex).")
LICENSE = typer.Option(None, help="SPDX id or URL.")
KEYWORD = typer.Option([], "--keyword", "-k", help="Keyword (repeat).")
CREATOR = typer.Option([], "--creator", help="'Name; ORCID; affiliation' (repeat).")
VERSION = typer.Option(None, help="Version.")
ACCESS = typer.Option(None, help="public or restricted (the default for new entries).")
READER = typer.Option([], "--reader", help="User who may read a restricted entry (repeat).")
DOI = typer.Option(None, help="DOI, e.g. 10.5281/zenodo.123.")
HANDLE = typer.Option(None, help="Handle.")
METADATA = typer.Option(None, help="More metadata as a JSON object.")


@app.command("add")
def add(
    title: str = typer.Option(..., help="Title."), description: str = DESCRIPTION, location: str = LOCATION,
    target: str = TARGET, path: str = PATH, format: str = FORMAT, size: int = SIZE, checksum: str = CHECKSUM,
    license: str = LICENSE, keyword: list[str] = KEYWORD, creator: list[str] = CREATOR, version: str = VERSION,
    access: str = ACCESS, reader: list[str] = READER, doi: str = DOI, handle: str = HANDLE, metadata: str = METADATA,
) -> None:
    """Register a dataset (you own it)."""
    body = _dataset_options(title, description, location, target, path, format, size, checksum, license, keyword,
                            creator, version, access, reader, doi, handle, metadata)
    with errors(), client() as api:
        created = CatalogueClient(api).create(**body)
        emit(created, lambda d: console.print(f"created dataset [bold]{d['id']}[/bold] ({d['access']})"))


@app.command("edit")
def edit(
    dataset_id: str, title: str = TITLE, description: str = DESCRIPTION, location: str = LOCATION,
    target: str = TARGET, path: str = PATH, format: str = FORMAT, size: int = SIZE, checksum: str = CHECKSUM,
    license: str = LICENSE, keyword: list[str] = KEYWORD, creator: list[str] = CREATOR, version: str = VERSION,
    access: str = ACCESS, reader: list[str] = READER, doi: str = DOI, handle: str = HANDLE, metadata: str = METADATA,
    expected_revision: int = typer.Option(None, help="Refuse if someone changed it since this revision."),
) -> None:
    """Change the given fields of one of your datasets (lists given replace the old ones)."""
    body = _dataset_options(title, description, location, target, path, format, size, checksum, license, keyword,
                            creator, version, access, reader, doi, handle, metadata)
    if expected_revision is not None:
        body["expected_revision"] = expected_revision
    with errors(), client() as api:
        changed = CatalogueClient(api).update(dataset_id, **body)
        emit(changed, lambda d: console.print(f"dataset {d['id']} is at revision {d['revision']}"))


@app.command("rm")
def remove(dataset_id: str) -> None:
    """Delete one of your datasets (its history is kept)."""
    with errors(), client() as api:
        CatalogueClient(api).delete(dataset_id)
        emit({"deleted": dataset_id}, lambda d: console.print(f"deleted dataset {d['deleted']}"))


@app.command("import")
def import_(file: Path = typer.Argument(..., help="JSON lines, as `export` writes them; '-' for stdin.")) -> None:
    """Import datasets from JSON lines: every line is checked first, then all or none are written."""
    body = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    with errors(), client() as api, Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                             transient=True, disable=State.json_output) as progress:
        lines = len(body.splitlines())
        progress.add_task(f"importing {lines} line(s)", total=None)
        report = CatalogueClient(api).import_lines(body)
    emit(report, lambda d: console.print(f"created {d['created']}, updated {d['updated']}, "
                                         f"unchanged {d['unchanged']}"))


@app.command("export")
def export(output: Path = typer.Option(None, "--output", "-o", help="File to write (default: stdout).")) -> None:
    """Export every dataset you may read as JSON lines (importable)."""
    with errors(), client() as api:
        lines = CatalogueClient(api).export_lines()
        if output is None:
            for line in lines:
                sys.stdout.write(line + "\n")
            return
        count = 0
        with output.open("w") as fh:
            for line in lines:
                fh.write(line + "\n")
                count += 1
        console.print(f"wrote {count} dataset(s) to {output}")


@targets.command("list")
def targets_list() -> None:
    """List storage targets."""
    with errors(), client() as api:
        emit(CatalogueClient(api).storage_targets(),
             lambda d: table(d, ["name", "site", "protocol", "base_path", "owner", "description"]))


@targets.command("add")
def targets_add(
    name: str, site: str = typer.Option(..., help="Site name (sftp) or host (https)."),
    protocol: str = typer.Option("sftp", help="sftp, https or file."),
    base_path: str = typer.Option(..., help="Absolute base path."), description: str = typer.Option(None),
) -> None:
    """Register a storage target."""
    with errors(), client() as api:
        created = CatalogueClient(api).create_storage_target(
            name=name, site=site, protocol=protocol, base_path=base_path, description=description)
        emit(created, lambda d: console.print(f"created storage target {d['name']} ({d['id']})"))
