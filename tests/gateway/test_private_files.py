"""A serving gateway's own files (home, SQLite database, registry) are its user's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from hpcwaas.stack.info import VaultInfo
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
