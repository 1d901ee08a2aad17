"""Every `waas ...` command that a message, hint or docstring of the code tells a person to run
exists, with the options it names: a hint that leads nowhere is a bug (seen: an invalid token's
hint was `waas tokens create`, which needs a valid token)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from hpcwaas.cli import app

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("gateway", "deployer", "hpcwaas", "catalogue", "containers", "data_logistics", "tosca")
# `waas` as a word (not hpcwaas), then the words of a command and its options.
MENTION = re.compile(r"(?<![A-Za-z_.-])waas((?: [a-z][a-z-]*)+)((?: (?:--[a-z][a-z-]*|<[^>]*>|\{[^}]*\}|[A-Z_]+|"
                     r"[a-z0-9][a-z0-9_./-]*))*)")


def mentions() -> dict[str, list[str]]:
    """Each command line the code mentions, with the files mentioning it."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for match in MENTION.finditer(path.read_text()):
                found.setdefault((match.group(1) + match.group(2)).strip(), []).append(str(path.relative_to(ROOT)))
    return found


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The command the words name (as deep as they go) and the words left over (typer carries
    its own click: groups are told by their ``commands``)."""
    command: Any = typer.main.get_command(app)
    while words and words[0] in getattr(command, "commands", {}):
        command = command.commands[words.pop(0)]
    return command, words


def test_every_mentioned_command_exists_with_its_options() -> None:
    found = mentions()
    assert len(found) > 10, found  # the scan itself works
    broken = []
    for line, files in sorted(found.items()):
        words = line.split()
        command, rest = resolve(list(words))
        leading = rest[0] if rest else ""
        if hasattr(command, "commands") and leading and not leading.startswith(("-", "<", "{")) \
                and leading[:1].islower() and leading not in ("or", "and", "to", "with", "for", "on"):
            broken.append(f"waas {line}: no command {leading!r} ({', '.join(sorted(set(files)))})")
            continue
        # --json is the root's, and taken anywhere on the line (hpcwaas.cli.hoist_json).
        options = {"--json", *(opt for param in command.params for opt in getattr(param, "opts", []))}
        for word in rest:
            if word.startswith("--") and word not in options:
                broken.append(f"waas {line}: no option {word} ({', '.join(sorted(set(files)))})")
    assert broken == [], "\n".join(broken)
