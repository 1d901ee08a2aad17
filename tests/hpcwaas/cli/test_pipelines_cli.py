"""`waas pipelines list|runs|run|status|logs|cancel` against a real gateway served over HTTP (uvicorn),
with runs going through the real Airflow services, sshd and OpenBao."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from data_logistics.credentials import burn
from gateway.main import create_app
from hpcwaas.cli import app
from hpcwaas.settings import Settings, get_settings
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key
from tests.fixtures.gateway import Person, registered_site
from tests.fixtures.live import live_server

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]


@pytest.fixture(scope="module")
def gateway_url(settings: Settings) -> Iterator[str]:
    if "postgresql" in (settings.database_url or ""):
        pytest.skip("Airflow runs are exercised once, with the SQLite gateway database")
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def waas(gateway_url: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `waas` as a given person (token) with a private config file."""
    monkeypatch.setenv("HPCWAAS_URL", gateway_url)
    monkeypatch.setenv("HPCWAAS_CLI_CONFIG", str(tmp_path / "cli.json"))
    monkeypatch.setenv("HPCWAAS_DATABASE_URL", settings.effective_database_url)
    runner = CliRunner()

    def run(*args: str, token: str | None = None) -> Any:
        if token:
            monkeypatch.setenv("HPCWAAS_TOKEN", token)
        else:
            monkeypatch.delenv("HPCWAAS_TOKEN", raising=False)
        get_settings.cache_clear()
        result = runner.invoke(app, list(args))
        get_settings.cache_clear()
        return result

    yield run
    get_settings.cache_clear()


@pytest.fixture
def alice_key(people: dict[str, Person], site: SiteInfo, stack: StackInfo) -> str:
    """A gateway key of alice's for sciuser1 (the private half stays in OpenBao)."""
    if stack.airflow is None:
        pytest.fail("the stack has no Airflow; run `python -m hpcwaas.stack up`", pytrace=False)
    registered_site(people["admin"], site)
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    return str(key["id"])


def test_list_run_status_runs_and_logs(waas, people: dict[str, Person], alice_key: str, stack: StackInfo,  # type: ignore[no-untyped-def]
                                       unique: str) -> None:
    token = people["alice"].token
    assert stack.airflow is not None
    own = stack.airflow.storage_root / "users" / people["alice"].id  # her file: paths live there
    (own / "tests").mkdir(parents=True, exist_ok=True)
    data = os.urandom(2 * 1024 * 1024 + 17)
    (own / "tests" / f"{unique}.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    listed = waas("--json", "pipelines", "list", token=token)
    assert listed.exit_code == 0, listed.output
    assert {p["name"] for p in json.loads(listed.output)} == {"stage_in", "stage_out", "image_transfer",
                                                              "site_to_site", "sync"}
    table = waas("pipelines", "list", token=token)
    assert table.exit_code == 0 and "stage_in" in table.output and "stage_out" in table.output  # an 80-column table

    # `run` follows the run to its end (progress bar on stderr) and shows the result.
    ran = waas("--json", "pipelines", "run", "stage_in", "-k", alice_key, "-s", f"file:tests/{unique}.bin",
               "-t", f"sftp://local/cli/{unique}.bin", "--sha256", digest, "--label", "cli-test", token=token)
    assert ran.exit_code == 0, ran.output
    assert "started stage_in run" in ran.output
    final = json.loads(ran.output[ran.output.index("{"):])
    assert final["state"] == "success" and final["label"] == "cli-test"
    assert final["result"]["sha256"] == digest and final["result"]["size"] == len(data)
    run_id = final["id"]
    # The stack's site is this machine: read what landed on the site user's disk.
    landed = Path(final["result"]["target"]["path"])
    assert landed.name == f"{unique}.bin" and hashlib.sha256(landed.read_bytes()).hexdigest() == digest

    shown = waas("--json", "pipelines", "status", "stage_in", run_id, token=token)
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.output)
    assert status["state"] == "success" and status["progress"]["phase"] == "done"
    assert status["progress"]["bytes_done"] == len(data)
    human = waas("pipelines", "status", "stage_in", run_id, token=token)
    assert human.exit_code == 0 and run_id in human.output and "success" in human.output
    assert "result.sha256" in human.output and digest[:40] in human.output  # a long digest wraps at 80 columns

    runs = waas("--json", "pipelines", "runs", "--pipeline", "stage_in", token=token)
    assert runs.exit_code == 0, runs.output
    assert run_id in {r["id"] for r in json.loads(runs.output)}
    # Another user does not see alice's run, neither in the list nor by id.
    bob = people["bob"].token
    assert run_id not in waas("--json", "pipelines", "runs", token=bob).output
    hidden = waas("pipelines", "status", "stage_in", run_id, token=bob)
    assert hidden.exit_code == 1 and "error" in hidden.output

    logs = waas("pipelines", "logs", "stage_in", run_id, token=token)
    assert logs.exit_code == 0, logs.output
    assert "progress phase=done" in logs.output

    # A run that fails exits 1 and says why: the destination now exists and overwrite was not asked.
    again = waas("pipelines", "run", "stage_in", "-k", alice_key, "-s", f"file:tests/{unique}.bin",
                 "-t", f"sftp://local/cli/{unique}.bin", token=token)
    assert again.exit_code == 1, again.output
    assert "failed" in again.output and "exists" in again.output


def test_run_without_waiting_then_cancel(waas, people: dict[str, Person], alice_key: str, stack: StackInfo,  # type: ignore[no-untyped-def]
                                         unique: str) -> None:
    from data_logistics.client import AirflowClient

    token = people["alice"].token
    started = waas("--json", "pipelines", "run", "image_transfer", "-k", alice_key,
                   "-s", "http://192.0.2.1/never.sif", "-t", f"sftp://local/{unique}.sif", "--no-wait", token=token)
    assert started.exit_code == 0, started.output
    run = json.loads(started.output[started.output.index("{"):])
    assert run["state"] in ("queued", "running")
    cancelled = waas("--json", "pipelines", "cancel", "image_transfer", run["id"], token=token)
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.output)["state"] == "failed"
    # The run's single-use token was spent by the cancel (or by the task, if it started first).
    assert stack.airflow is not None
    airflow = AirflowClient(stack.airflow.url, stack.airflow.username, stack.airflow.password())
    conf = airflow.get_run("image_transfer", run["id"])["conf"]
    assert not burn(conf["target"]["site"]["vault_addr"], conf["target"]["site"]["wrap_token"])


def test_errors_are_reported_with_exit_code_1(waas, people: dict[str, Person], alice_key: str) -> None:  # type: ignore[no-untyped-def]
    token = people["alice"].token
    unknown = waas("pipelines", "run", "no_such_pipeline", "-k", alice_key, "-s", "file:x", "-t", "sftp://local/x",
                   token=token)
    assert unknown.exit_code == 1 and "error" in unknown.output and "404" in unknown.output
    # Bob cannot stage with alice's key: refused before any run starts.
    stolen = waas("pipelines", "run", "stage_in", "-k", alice_key, "-s", "file:x", "-t", "sftp://local/x",
                  token=people["bob"].token)
    assert stolen.exit_code == 1 and "404" in stolen.output
    assert "started" not in stolen.output
