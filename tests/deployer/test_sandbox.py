"""A developer's code never runs with the deployer's privileges: every way a template can run
code on the controller runs inside the sandbox, as a uid of its own, seeing none of this
machine's secrets, the stack's processes or other runs."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import api
from hpcwaas.stack.info import VaultInfo
from tests.fixtures.gateway_user import gateway_account, gateway_owned_dir, give, run_as_gateway
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


_DEPLOY_AS_GATEWAY = """
import json, sys
from pathlib import Path
from deployer import api
template, state, targets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
api.deploy(Path(template), Path(state), inputs={"targets": targets})
"""


def test_an_unprivileged_gateways_runs_each_get_a_uid_of_their_own(vault_info: VaultInfo) -> None:
    """The gateway as its own user (the demo's, production's): the hostile template runs as one of
    that user's subordinate ids, never as the gateway's uid, and reads none of the gateway's files."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    account = gateway_account()
    with gateway_owned_dir("hpcwaas-sbx-test-") as folder:
        secret_value = f"gateway-secret-{secrets.token_hex(8)}"
        secret = folder / "home" / "secret"
        secret.parent.mkdir(mode=0o700)
        secret.write_text(secret_value)
        secret.chmod(0o600)
        token = folder / "vault-token"
        token.write_text(vault_info.gateway_token_file.read_text())
        token.chmod(0o600)
        give(folder)
        targets = [str(secret), str(token), "/etc/shadow"]
        before = set(Path(tempfile.gettempdir()).glob("hpcwaas-ar-*"))
        code = _DEPLOY_AS_GATEWAY.replace("sys.argv[1], sys.argv[2], json.loads(sys.argv[3])",
                                          f"{str(UNTRUSTED)!r}, {str(folder / 'state')!r}, {targets!r}")
        ran = run_as_gateway(code, cwd=folder, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        out = api.outputs(folder / "state")
        ids = subordinate_ids_of(account.pw_name)
        check_saw_nothing(out, targets, [secret_value, token.read_text().strip()], caller=account.pw_uid,
                          pool=range(ids[0], ids[0] + ids[1]))
        assert set(out["read"]) == set(out["delegated"]) == set(out["plugin"]) == set(targets)
        assert set(Path(tempfile.gettempdir()).glob("hpcwaas-ar-*")) <= before, "a run's folder was left behind"


def subordinate_ids_of(name: str) -> tuple[int, int]:
    for line in Path("/etc/subuid").read_text().splitlines():
        user, start, count = line.split(":")
        if user == name:
            return int(start), int(count)
    pytest.fail(f"{name} has no subordinate ids: run `make install`", pytrace=False)
