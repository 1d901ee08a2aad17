"""`--json` may come last: it is moved to the root unless the command has its own."""

from __future__ import annotations

import json
import sys

import pytest

from hpcwaas.cli import hoist_json, main
from hpcwaas.cli import workflows as cli_workflows
from tests.hpcwaas.cli.test_status_exit import _FakeClient


@pytest.mark.parametrize(("given", "expected"), [
    (["executions", "list", "--json"], ["--json", "executions", "list"]),
    (["executions", "status", "e1", "--json"], ["--json", "executions", "status", "e1"]),
    (["--json", "executions", "list"], ["--json", "executions", "list"]),
    (["stack", "status", "--json"], ["stack", "status", "--json"]),  # its own flag
    (["run", "wf", "--", "--json"], ["run", "wf", "--", "--json"]),  # a value after --
    (["executions", "list"], ["executions", "list"]),
])
def test_hoist_json(given: list[str], expected: list[str]) -> None:
    assert hoist_json(given) == expected


def test_json_last_gives_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_workflows, "client", lambda: _FakeClient("completed"))
    monkeypatch.setattr(sys, "argv", ["waas", "executions", "status", "e1", "--json"])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 0
    assert json.loads(capsys.readouterr().out)["state"] == "completed"
