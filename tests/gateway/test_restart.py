"""Restarting the gateway and the stack keeps users, tokens, sites and keys (and keys still work)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient

from gateway.core.db import upgrade
from gateway.main import create_app
from hpcwaas.settings import Settings
from hpcwaas.stack.info import StackInfo
from hpcwaas.stack.site_users import authorize_key

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]


def _stack(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "hpcwaas.stack", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_everything_survives_a_restart_of_gateway_and_stack(stack: StackInfo, database_url: str,
                                                             tmp_path) -> None:
    raft = stack.vault("raft")
    assert stack.site is not None
    settings = Settings(home=tmp_path, database_url=database_url, vault_addr=raft.addr,
                        vault_token_file=raft.gateway_token_file, vault_mount=raft.mount)
    upgrade(database_url)
    from gateway.core.db import make_engine, make_session_factory
    from gateway.services.users import bootstrap_admin

    engine = make_engine(database_url)
    with make_session_factory(engine)() as db:
        _, admin_token, _ = bootstrap_admin(db, "admin", 1)
    engine.dispose()
    admin = {"Authorization": f"Bearer {admin_token}"}
    name = f"restart{uuid.uuid4().hex[:6]}"
    with TestClient(create_app(settings)) as api:
        user = api.post("/users", json={"username": name}, headers=admin).json()
        token = api.post(f"/users/{user['id']}/tokens", json={}, headers=admin).json()["token"]
        me = {"Authorization": f"Bearer {token}"}
        site = api.post("/sites", headers=admin, json={
            "name": name, "login_host": stack.site.host, "port": stack.site.port, "host_key": stack.site.host_key})
        assert site.status_code == 201, site.text
        key = api.post("/ssh_keys", json={"login": "sciuser2"}, headers=me).json()
        authorize_key("sciuser2", key["public_key"])

    # Restart the persistent Vault and the site's daemons.
    _stack("down", "--only", "openbao-raft,sshd,slurm")
    _stack("up", "--demo", "--only", "openbao-raft,sshd,slurm")

    with TestClient(create_app(settings)) as api:
        assert api.get("/users/me", headers=me).json()["username"] == name
        assert name in [s["name"] for s in api.get("/sites", headers=me).json()]
        assert [k["id"] for k in api.get("/ssh_keys", headers=me).json()] == [key["id"]]
        checked = api.post(f"/ssh_keys/{key['id']}/check", json={"site": name}, headers=me)
        assert checked.status_code == 200, checked.text
        assert checked.json()["remote_user"] == "sciuser2"
