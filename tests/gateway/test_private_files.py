"""A serving gateway's own files (home, SQLite database, registry) are its user's alone."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from hpcwaas.stack.info import StackInfo, VaultInfo
from hpcwaas.stack.site_users import GATEWAY_USER
from tests.fixtures.gateway_user import gateway_account, gateway_owned_dir, give, run_as_gateway
from tests.fixtures.processes import engine_env, free_port, processes, wait_http

pytestmark = pytest.mark.vault


def test_the_database_and_home_are_not_world_readable(tmp_path: Path, vault_info: VaultInfo) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # an operator's too-open folder is closed at start
    database = home / "hpcwaas.db"
    env = engine_env(f"sqlite:///{database}", vault_info, home, [tmp_path])
    port = free_port()
    with processes(tmp_path) as group:
        gateway = group.gateway(env, port)
        gateway.start()
        wait_http(f"http://127.0.0.1:{port}", gateway)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert database.exists()
        for path in [home, *home.rglob("*")]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def test_the_gateway_serves_as_its_own_unprivileged_user_and_can_build(vault_info: VaultInfo, stack: StackInfo,
                                                                       tmp_path: Path) -> None:
    """As in the demo and in production: the gateway runs as ``hpcwaas``, holds a copy of its Vault
    token that only it reads, and builds images through the helper (no root of its own)."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    assert stack.apptainer is not None
    account = gateway_account()
    with gateway_owned_dir("hpcwaas-gateway-") as folder:
        home = folder / "home"
        token = folder / "vault-token"
        token.write_text(vault_info.gateway_token_file.read_text())
        token.chmod(0o600)
        give(token)
        env = engine_env(f"sqlite:///{home / 'hpcwaas.db'}", vault_info, home, [folder], vault_token_file=token,
                         builder_dir=stack.apptainer.tree.parent)
        env["HOME"] = str(folder)
        port = free_port()
        with processes(tmp_path) as group:
            gateway = group.gateway(env, port, user=GATEWAY_USER)
            gateway.start()
            wait_http(f"http://127.0.0.1:{port}", gateway)
            uids = Path(f"/proc/{gateway.pid}/status").read_text().split("Uid:")[1].split()[:4]
            assert uids == [str(account.pw_uid)] * 4, uids
            boot = run_as_gateway(
                "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-m', 'hpcwaas.cli', '--json', "
                "'admin', 'bootstrap', '--username', 'admin']))", cwd=folder,
                env={k: v for k, v in env.items() if k.startswith("HPCWAAS_")})
            assert boot.returncode == 0, boot.stderr
            admin = json.loads(boot.stdout)["token"]
            builder = httpx.get(f"http://127.0.0.1:{port}/images/builder", timeout=60,
                                headers={"Authorization": f"Bearer {admin}"})
            assert builder.status_code == 200, builder.text
            assert builder.json()["available"] is True, builder.json()
            for path in [home, *home.rglob("*")]:
                info = os.lstat(path)
                assert info.st_uid == account.pw_uid and stat.S_IMODE(info.st_mode) & 0o077 == 0, path
