"""A developer's code never runs with the deployer's privileges: every way a template can run
code on the controller runs inside the sandbox, as a uid of its own, seeing none of this
machine's secrets, the stack's processes or other runs."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import api
from hpcwaas.stack.info import VaultInfo
from tests.fixtures.sandbox_probe import UNTRUSTED, check_saw_nothing


@pytest.fixture
def planted_secret() -> Iterator[tuple[Path, str]]:
    """A root-only file outside /tmp, as the gateway's own files are."""
    folder = Path.home() / ".cache" / f"hpcwaas-sandbox-test-{secrets.token_hex(4)}"
    folder.mkdir(parents=True, mode=0o700)
    value = f"gateway-secret-{secrets.token_hex(8)}"
    path = folder / "secret"
    path.write_text(value)
    path.chmod(0o600)
    yield path, value
    shutil.rmtree(folder)


def test_untrusted_playbook_sees_nothing_of_the_host(tmp_path: Path, planted_secret: tuple[Path, str],
                                                      vault_info: VaultInfo) -> None:
    secret_path, secret_value = planted_secret
    decoy = tmp_path / "other-run"  # what another run's folder would look like
    decoy.mkdir()
    (decoy / "extravars").write_text(secret_value)
    targets = [str(secret_path), str(vault_info.root_token_file), str(vault_info.gateway_token_file),
               str(decoy / "extravars"), "/etc/shadow"]
    api.deploy(UNTRUSTED, tmp_path / "state", inputs={"targets": targets})
    out = api.outputs(tmp_path / "state")

    secrets_seen = [secret_value] + [f.read_text().strip() for f in (vault_info.root_token_file,
                                                                     vault_info.gateway_token_file)]
    check_saw_nothing(out, targets, secrets_seen)
    # The probe really ran (each way reported) and the planted secret is still there, unread.
    assert set(out["read"]) == set(out["delegated"]) == set(out["plugin"]) == set(targets)
    assert secret_path.read_text() == secret_value and secret_value not in repr(out)
