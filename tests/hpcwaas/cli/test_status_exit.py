"""`waas executions status` exit codes (a fake client: only the CLI's own logic is under test)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from hpcwaas.cli import app
from hpcwaas.cli import workflows as cli_workflows


class _FakeClient:
    def __init__(self, state: str) -> None:
        self.state = state

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        return {"id": execution_id, "state": self.state, "steps": [], "outputs": {}, "error": None,
                "workflow_id": "w", "created_at": None, "started_at": None, "finished_at": None}


@pytest.mark.parametrize(("state", "code"), [("completed", 0), ("running", 0), ("pending", 0),
                                             ("failed", 1), ("cancelled", 1)])
@pytest.mark.parametrize("as_json", [False, True])
def test_status_exit_code_follows_the_outcome(monkeypatch: pytest.MonkeyPatch, state: str, code: int,
                                              as_json: bool) -> None:
    monkeypatch.setattr(cli_workflows, "client", lambda: _FakeClient(state))
    args = (["--json"] if as_json else []) + ["executions", "status", "e1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert state in result.output
