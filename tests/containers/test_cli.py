"""`waas images` against a real gateway over HTTP: build (a cache hit), status, logs, list, show, pull."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from containers.store import ImageStore
from gateway.main import create_app
from hpcwaas.cli import app
from hpcwaas.settings import Settings, get_settings
from tests.containers.conftest import BuiltImage, seed
from tests.fixtures.gateway import Person
from tests.fixtures.live import live_server


@pytest.fixture(scope="module")
def gateway_url(settings: Settings) -> Iterator[str]:
    with live_server(create_app(settings)) as url:
        yield url


@pytest.fixture
def waas(gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HPCWAAS_URL", gateway_url)
    monkeypatch.setenv("HPCWAAS_CLI_CONFIG", str(tmp_path / "cli.json"))
    runner = CliRunner()

    def run(*args: str, token: str):
        monkeypatch.setenv("HPCWAAS_TOKEN", token)
        get_settings.cache_clear()
        try:
            return runner.invoke(app, list(args))
        finally:
            get_settings.cache_clear()

    yield run
    get_settings.cache_clear()


def test_build_status_logs_list_show_pull(waas, people: dict[str, Person], settings: Settings,
                                          hello_image: BuiltImage, tmp_path: Path) -> None:
    seed(ImageStore(settings.effective_images_dir), hello_image)
    token = people["dave"].token
    built = waas("--json", "images", "build", str(hello_image.step / "image.yaml"), token=token)
    assert built.exit_code == 0, built.output
    record = json.loads(built.stdout)
    assert record["state"] == "succeeded" and record["cached"] and record["image_id"] == hello_image.ref.id

    status = waas("--json", "images", "status", record["id"], token=token)
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert "already in the store" in waas("images", "logs", record["id"], token=token).stdout
    listed = json.loads(waas("--json", "images", "list", token=token).stdout)
    assert hello_image.ref.id in {i["id"] for i in listed}
    definition = waas("images", "show", hello_image.ref.id, "--definition", token=token).stdout
    assert definition.startswith("Bootstrap: debootstrap")

    dest = tmp_path / "hello.sif"
    data = hello_image.ref.path.read_bytes()
    (tmp_path / "hello.sif.part").write_bytes(data[: len(data) // 3])  # an interrupted pull resumes
    pulled = waas("images", "pull", hello_image.ref.id, "-o", str(dest), token=token)
    assert pulled.exit_code == 0, pulled.output
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_invalid_spec_is_reported_with_the_field(waas, people: dict[str, Person], tmp_path: Path) -> None:
    spec = tmp_path / "image.yaml"
    spec.write_text("apt:\n  - python3\n  - 'rm -rf /'\n")
    result = waas("images", "build", str(spec), token=people["dave"].token)
    assert result.exit_code == 1
    assert "apt.1" in result.output and ":3:" in result.output  # file, line and field, checked locally
