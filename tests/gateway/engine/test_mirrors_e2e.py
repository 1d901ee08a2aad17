"""A catalogue mirror kept in sync by the gateway's own engine, through the real Airflow `sync` DAG,
sshd and OpenBao: first a full copy, then only what changed."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from hpcwaas.settings import Settings
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.fixtures.gateway import Person, fresh_database, registered_site, seed_people

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]


@pytest.fixture(scope="module")
def gateway(settings: Settings, stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Person]]:
    """A gateway with its engine on, over a SQLite database of its own (one Airflow run set is enough)."""
    if stack.airflow is None:
        pytest.fail("the stack has no Airflow; run `python -m hpcwaas.stack up`", pytrace=False)
    if "postgresql" in (settings.database_url or ""):
        pytest.skip("Airflow runs are exercised once, with the SQLite gateway database")
    with fresh_database("sqlite", stack, tmp_path_factory.mktemp("mirror-db")) as url:
        live = settings.model_copy(update={"database_url": url, "engine_in_gateway": True,
                                           "engine_poll_seconds": 0.2, "engine_workers": 2,
                                           "pipelines_storage_root": stack.airflow.storage_root})
        with TestClient(create_app(live)) as client:
            yield seed_people(url, client)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _synced(alice: Person, mirror_id: str, runs: int, timeout: float = 180) -> dict[str, Any]:
    """Wait until the engine started run number ``runs`` and Airflow finished it; the run."""
    deadline = time.monotonic() + timeout
    while True:
        mirror = alice.get(f"/catalogue/mirrors/{mirror_id}").json()
        assert mirror["last_error"] is None, mirror
        if mirror["runs"] >= runs:
            run = alice.get(f"/pipelines/sync/runs/{mirror['last_run_id']}").json()
            if run["state"] in ("success", "failed"):
                return dict(run)
        assert time.monotonic() < deadline, f"mirror not synced in {timeout} s: {mirror}"
        time.sleep(0.5)


def test_the_engine_keeps_a_mirror_in_sync(gateway: dict[str, Person], site: SiteInfo, stack: StackInfo) -> None:
    alice, admin = gateway["alice"], gateway["admin"]
    assert stack.airflow is not None
    registered_site(admin, site)
    unique = uuid.uuid4().hex[:8]
    base = stack.airflow.storage_root / f"mirrors-{unique}"
    source = base / "inputs"
    for n in range(12):
        (source / f"part{n % 3}").mkdir(parents=True, exist_ok=True)
        (source / f"part{n % 3}" / f"f{n}.dat").write_bytes(os.urandom(1000 + n))
    target = alice.post("/catalogue/storage-targets", json={
        "name": f"t-{unique}", "site": "localhost", "protocol": "file", "base_path": str(base)})
    assert target.status_code == 201, target.text
    key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    try:
        made = alice.post("/catalogue/mirrors", json={
            "name": f"m-{unique}", "storage_target": f"t-{unique}", "path": "inputs", "site": "local",
            "site_path": f"mirror-{unique}/inputs", "ssh_key": key["id"]})
        assert made.status_code == 201, made.text
        mirror_id = made.json()["id"]

        first = _synced(alice, mirror_id, runs=1)
        assert first["state"] == "success", first
        assert first["requested_by"] == alice.id and first["label"] == f"mirror m-{unique}"
        copy = Path("/home/sciuser1/hpcwaas") / f"mirror-{unique}" / "inputs"  # the loopback site's disk
        assert _tree(copy) == _tree(source)
        shown = alice.get(f"/catalogue/mirrors/{mirror_id}").json()
        assert shown["runs"] == 1 and shown["wake_at"] > shown["last_triggered_at"]  # next one scheduled
        assert gateway["bob"].get(f"/pipelines/sync/runs/{first['id']}").status_code == 404

        # One file changes and one goes: "sync now" sends the change and removes the file.
        (source / "part0" / "f0.dat").write_bytes(b"changed")
        (source / "part1" / "f1.dat").unlink()
        assert alice.post(f"/catalogue/mirrors/{mirror_id}/sync").status_code == 202
        second = _synced(alice, mirror_id, runs=2)
        assert second["state"] == "success", second
        assert second["id"] != first["id"]
        assert _tree(copy) == _tree(source)
        assert (second.get("result") or {}).get("resumed_from") == 10  # 10 of 11 files were up to date
    finally:
        revoke_key("sciuser1", key["public_key"])
