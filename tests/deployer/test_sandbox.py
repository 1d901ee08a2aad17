"""A developer's code never runs with the deployer's privileges: every way a template can run
code on the controller runs inside the sandbox, as a uid of its own, seeing none of this
machine's secrets, the stack's processes or other runs."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import api, sandbox
from hpcwaas.stack.info import VaultInfo

UNTRUSTED = Path(__file__).resolve().parents[1] / "fixtures" / "untrusted"


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
    out = api.load_record(tmp_path / "state").nodes["probe"].attributes

    assert int(out["uid"]) not in (0, os.getuid())
    if os.geteuid() == 0:
        assert sandbox.UID_BASE <= int(out["uid"]) < sandbox.UID_BASE + sandbox.UID_COUNT
    for target in targets:
        assert out["read"][target] == "", f"lookup('file') read {target}"
        assert out["delegated"][target] == "", f"a task delegated to localhost read {target}"
        assert out["plugin"][target].startswith("denied"), f"a filter plugin read {target}"
    assert secret_value not in repr(out)
    for token_file in (vault_info.root_token_file, vault_info.gateway_token_file):
        assert token_file.read_text().strip() not in repr(out)
    # its /tmp holds its own run folder only; its process table, its own processes only
    assert len(out["tmp"].split()) == 1 and out["tmp"].startswith("hpcwaas-ar-")
    assert not {"bao", "sshd", "slurmctld", "munged", "postgres"} & set(out["processes"].split())
