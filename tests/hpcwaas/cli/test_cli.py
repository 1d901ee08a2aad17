"""The `waas` CLI against a real gateway served over HTTP (uvicorn), with the real stack."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.main import create_app
from hpcwaas.cli import app
from hpcwaas.settings import Settings, get_settings
from hpcwaas.stack.info import SiteInfo
from hpcwaas.stack.site_users import authorize_key
from tests.fixtures.gateway import Person
from tests.fixtures.live import live_server

pytestmark = pytest.mark.site


@pytest.fixture(scope="module")
def gateway_url(settings: Settings) -> Iterator[str]:
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def waas(gateway_url: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `waas` as a given person (token) with a private config file."""
    monkeypatch.setenv("HPCWAAS_URL", gateway_url)
    monkeypatch.setenv("HPCWAAS_CLI_CONFIG", str(tmp_path / "cli.json"))
    monkeypatch.setenv("HPCWAAS_DATABASE_URL", settings.effective_database_url)
    runner = CliRunner()

    def run(*args: str, token: str | None = None, input: str | None = None):
        if token:
            monkeypatch.setenv("HPCWAAS_TOKEN", token)
        else:
            monkeypatch.delenv("HPCWAAS_TOKEN", raising=False)
        get_settings.cache_clear()
        result = runner.invoke(app, list(args), input=input)
        get_settings.cache_clear()
        return result

    yield run
    get_settings.cache_clear()


def test_no_token_says_what_to_do(waas) -> None:
    result = waas("users", "me")
    assert result.exit_code == 1
    assert "no API token given" in result.output and "hint" in result.output


def test_errors_print_brackets_as_text_and_bad_metadata_is_a_usage_error(waas, people: dict[str, Person],
                                                                         unique: str) -> None:
    token = people["alice"].token
    made = waas("--json", "catalogue", "add", "--title", f"brackets {unique}", "--access", "public", token=token)
    assert made.exit_code == 0, made.output
    dataset = json.loads(made.output)["id"]
    bad_reader = waas("catalogue", "edit", dataset, "--reader", "", token=token)
    assert bad_reader.exit_code == 1
    assert "[a-z]" in bad_reader.output  # the pattern in the API's message, not eaten as console markup
    for value in ("{bad", "[1, 2]"):
        bad = waas("catalogue", "edit", dataset, "--metadata", value, token=token)
        assert bad.exit_code == 2 and "--metadata" in bad.output and "Traceback" not in bad.output, bad.output
    assert waas("catalogue", "rm", dataset, token=token).exit_code == 0


def test_me_as_json(waas, people: dict[str, Person]) -> None:
    result = waas("--json", "users", "me", token=people["alice"].token)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["username"] == "alice"


def test_config_file_is_private(waas, tmp_path: Path) -> None:
    result = waas("config", "set", "--url", "http://example.invalid:1")
    assert result.exit_code == 0
    mode = stat.S_IMODE((tmp_path / "cli.json").stat().st_mode)
    assert mode == 0o600


def test_bootstrap_reissues_a_token_for_the_existing_admin(waas) -> None:
    result = waas("--json", "admin", "bootstrap", "--username", "admin")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["created"] is False and out["token"].startswith("hpcw_")
    me = waas("--json", "users", "me", token=out["token"])
    assert json.loads(me.output)["role"] == "admin"


def test_site_add_checks_the_fingerprint(waas, people: dict[str, Person], site: SiteInfo, unique: str) -> None:
    admin = people["admin"].token
    wrong = waas("sites", "add", f"cli-{unique}", "--host", site.host, "--port", str(site.port),
                 "--fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", token=admin)
    assert wrong.exit_code == 1 and "does not offer a key" in wrong.output
    scanned = json.loads(waas("--json", "sites", "scan", site.host, "--port", str(site.port), token=admin).output)
    fingerprint = next(k["fingerprint"] for k in scanned if k["key"] == site.host_key)
    ok = waas("--json", "sites", "add", f"cli-{unique}", "--host", site.host, "--port", str(site.port),
              "-p", "debug", "--fingerprint", fingerprint, token=admin)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["host_key"] == site.host_key
    listed = waas("--json", "sites", "list", token=people["bob"].token)
    assert f"cli-{unique}" in [s["name"] for s in json.loads(listed.output)]
    human = waas("sites", "list", token=people["bob"].token)
    assert human.exit_code == 0 and "debug" in human.output
    assert json.loads(ok.output)["ssh_certificates"] is False
    switched = waas("--json", "sites", "set", f"cli-{unique}", "--certificates", token=admin)
    assert switched.exit_code == 0 and json.loads(switched.output)["ssh_certificates"] is True
    nothing = waas("sites", "set", f"cli-{unique}", token=admin)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output


def test_scientist_key_check_and_job(waas, people: dict[str, Person], site: SiteInfo, unique: str,
                                     tmp_path: Path) -> None:
    from tests.fixtures.gateway import registered_site

    registered_site(people["admin"], site)
    bob = people["bob"].token
    created = waas("--json", "ssh-keys", "create", "--login", "sciuser2", "--name", f"cli-{unique}", token=bob)
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    authorize_key("sciuser2", key["public_key"])
    checked = waas("ssh-keys", "check", key["id"], "--site", "local", token=bob)
    assert checked.exit_code == 0 and "logged in to local as sciuser2" in checked.output
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\necho \"cli job says $((6 * 7))\"\n")
    job = waas("jobs", "submit", "local", str(script), "--key", key["id"], "--wait", token=bob)
    assert job.exit_code == 0, job.output
    assert "COMPLETED" in job.output and "cli job says 42" in job.output
    listed = waas("--json", "ssh-keys", "list", token=bob)
    assert f"cli-{unique}" in [k["name"] for k in json.loads(listed.output)]
    assert waas("ssh-keys", "rm", key["id"], token=people["alice"].token).exit_code == 1
    assert waas("ssh-keys", "rm", key["id"], token=bob).exit_code == 0


def test_inputs_are_converted_by_their_declared_types() -> None:
    """`-i` values take the workflow's declared types: a string stays a string (even `007`), a
    wrong value names the input, its type and an example; an unknown input lists the known ones."""
    import typer

    from hpcwaas.cli.workflows import parse_inputs

    declared = {"name": {"type": "string"}, "top": {"type": "integer"}, "rate": {"type": "float"},
                "dry": {"type": "boolean"}, "files": {"type": "list"}, "user_id": {"type": "string",
                                                                                   "provided": "user_id"}}
    assert parse_inputs(["name=007", "top=8", "rate=0.5", "dry=yes", 'files=["a"]'], declared) == \
        {"name": "007", "top": 8, "rate": 0.5, "dry": True, "files": ["a"]}
    assert parse_inputs(["name=true"], declared) == {"name": "true"}  # no guessing from the value
    for item, said in [("top=eight", "input 'top' is an integer; 'eight' is not one"),
                       ("dry=maybe", "input 'dry' is a boolean"),
                       ('files={"a": 1}', "input 'files' is a list"),
                       ("nme=x", "the workflow has no input 'nme'; its inputs are: dry, files, name, rate, top")]:
        with pytest.raises(typer.BadParameter, match=said.replace("(", r"\(").replace("[", r"\[")):
            parse_inputs([item], declared)


def test_records_fit_a_terminal_with_nested_fields_indented(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata was one overlong JSON-ish line with doubled backslashes; now indented fields, as-is."""
    import io

    from rich.console import Console

    from hpcwaas.cli import _common

    out = io.StringIO()
    monkeypatch.setattr(_common, "console", Console(file=out, width=80, color_system=None))
    record = {"id": "d1", "title": "[bold]not markup[/bold]", "path": "C:\\data\\run",
              "metadata": {"instrument": {"name": "CTD", "serial": 42}, "tags": ["a", "b"]},
              "creators": [{"name": "Ada", "orcid": "0000-0001"}], "doi": None}
    _common.fields(record)
    text = out.getvalue()
    assert text.splitlines() == [
        "id: d1", "title: [bold]not markup[/bold]", "path: C:\\data\\run", "metadata:", "  instrument:",
        "    name: CTD", "    serial: 42", "  tags: a, b", "creators:", "  -", "    name: Ada", "    orcid: 0000-0001",
        "doi:"]
    assert max(len(line) for line in text.splitlines()) <= 80
