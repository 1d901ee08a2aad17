"""What every CLI command shares: the gateway client from config, output, error reporting."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hpcwaas.client import ApiError, Client
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import get_settings

console = Console()
err_console = Console(stderr=True)


class State:
    """Global options (set by the root callback)."""

    json_output: bool = False


def load_config() -> dict[str, str]:
    """The CLI's saved URL and token (``waas config set``), overridden by HPCWAAS_URL/HPCWAAS_TOKEN."""
    settings = get_settings()
    data: dict[str, str] = {}
    if settings.cli_config.exists():
        data = json.loads(settings.cli_config.read_text())
    if settings.url:
        data["url"] = settings.url
    if settings.token:
        data["token"] = settings.token.get_secret_value()
    data.setdefault("url", f"http://{settings.bind_host}:{settings.bind_port}")
    return data


def save_config(values: dict[str, str]) -> Path:
    """Write the CLI config file, readable by its owner only (it holds a token)."""
    path = get_settings().cli_config
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(values)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(current, fh, indent=2)
    os.chmod(path, 0o600)
    return path


def client() -> Client:
    """A client for the configured gateway."""
    cfg = load_config()
    return Client(cfg["url"], cfg.get("token"))


@contextmanager
def errors() -> Iterator[None]:
    """Report hpcwaas errors as one readable line plus a hint, and exit 1."""
    try:
        yield
    except ApiError as exc:
        # Messages quote patterns and paths: "[a-z]" must print as text, not as console markup.
        status = f"{exc.status} {exc.code}" if exc.status else exc.code
        err_console.print(f"[red]error:[/red] {escape(exc.message)} [dim]({escape(status)})[/dim]")
        if exc.hint:
            err_console.print(f"  [yellow]hint:[/yellow] {escape(exc.hint)}")
        if isinstance(exc.details, list):
            for d in exc.details[:10]:
                err_console.print(f"  - {escape(str(d.get('field')))}: {escape(str(d.get('message')))}")
        raise typer.Exit(1) from None
    except HpcwaasError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}")
        if exc.hint:
            err_console.print(f"  [yellow]hint:[/yellow] {escape(exc.hint)}")
        raise typer.Exit(1) from None


def emit(data: Any, human: Callable[[Any], None]) -> None:
    """Print JSON with --json, else the human rendering."""
    if State.json_output:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        human(data)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """A rich table of the given columns."""
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")  # wrap, never cut: ids and fingerprints get copied
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in columns))
    console.print(t)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def fields(data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Key: value lines; a nested map or list as indented lines below its key, values as they are
    (no quotes, no doubled backslashes, no markup)."""
    for line in _field_lines(data, keys or list(data), 0):
        console.print(line, markup=False, highlight=False, soft_wrap=False)


def _field_lines(data: dict[str, Any], keys: Sequence[str], depth: int) -> list[Text]:
    lines = []
    pad = "  " * depth
    for key in keys:
        value = data.get(key)
        head = Text(f"{pad}{key}:", style="bold")
        if isinstance(value, dict) and value:
            lines.append(head)
            lines.extend(_field_lines(value, list(value), depth + 1))
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            lines.append(head)
            for item in value:
                if isinstance(item, dict):
                    lines.append(Text(f"{pad}  -"))
                    lines.extend(_field_lines(item, list(item), depth + 2))
                else:
                    lines.append(Text(f"{pad}  - {_cell(item)}"))
        else:
            lines.append(head + Text(f" {_cell(value)}" if value not in (None, "", [], {}) else ""))
    return lines
