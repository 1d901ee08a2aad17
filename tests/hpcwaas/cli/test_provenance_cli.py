"""`waas executions provenance`: the PROV document as a few lines, or as it is with --json."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from hpcwaas.cli import app
from hpcwaas.cli import workflows as cli_workflows
from tests.gateway.services.test_provenance import _document


class _FakeClient:
    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execution_provenance(self, execution_id: str) -> dict[str, Any]:
        assert execution_id == "e1"
        return _document()


def test_provenance_reads_as_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_workflows, "client", _FakeClient)
    result = CliRunner().invoke(app, ["executions", "provenance", "e1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "execution/e1 (completed) by alice on local" in lines[0]
    for expected in ("workflow workflow/w1/v2 (git:abc)", "image sha256:abc", "step count: done Slurm job 42",
                     "step stage_in: done pipeline run r1", "in  dataset/d1 sha256 s1",
                     "out dataset/d2 sha256 s2, derived from dataset/d1"):
        assert any(expected in line for line in lines), (expected, result.output)


def test_provenance_json_is_the_prov_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_workflows, "client", _FakeClient)
    result = CliRunner().invoke(app, ["--json", "executions", "provenance", "e1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == _document()
