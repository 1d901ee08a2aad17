"""Run folders on the site are removed after the operator's retention: ended runs only, with the
owner's key; a failed one whose folder is gone is no longer resumable (real site, real Vault)."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

import pytest

from gateway.core.db import make_engine, make_session_factory
from gateway.persistence.models import Execution, ExecutionState, Site, utcnow
from gateway.services import retention
from hpcwaas.settings import Settings
from hpcwaas.stack.info import SiteInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from hpcwaas.vault import Vault
from tests.fixtures.gateway import Person, error_of
from tests.gateway.api.test_executions import _deployed

pytestmark = [pytest.mark.site, pytest.mark.vault]


def test_ended_runs_folders_are_removed_after_the_retention(people: dict[str, Person], settings: Settings,
                                                           site: SiteInfo) -> None:
    deployed = _deployed(people, settings, site)
    alice = people["alice"]
    url = f"/workflows/{deployed['name']}/executions"
    ids = [alice.post(url, json={"inputs": {}, "ssh_key": deployed["alice_key"]}).json()["id"] for _ in range(3)]
    old, running, failed = ids
    public = alice.get(f"/ssh_keys/{deployed['alice_key']}").json()["public_key"]
    authorize_key("sciuser1", public)
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    folders: dict[str, str] = {}
    try:
        with sessions() as db:
            states: dict[str, tuple[ExecutionState, Any]] = {
                old: (ExecutionState.COMPLETED, utcnow() - timedelta(days=20)),
                running: (ExecutionState.RUNNING, None),
                failed: (ExecutionState.FAILED, utcnow() - timedelta(days=15))}
            local = db.query(Site).filter(Site.name == "local").one()
            for execution_id, (state, finished) in states.items():
                execution = db.get(Execution, execution_id)
                assert execution is not None
                execution.state, execution.finished_at, execution.record = state, finished, {"runs": []}
                folders[execution_id] = retention.run_dir(local, "sciuser1", execution_id)
            db.commit()
        for folder in folders.values():
            subprocess.run(["runuser", "-u", "sciuser1", "--", "sh", "-c", 'mkdir -p "$1" && echo x > "$1/out"',
                            "sh", folder], check=True)
        removed = retention.sweep(sessions, Vault.from_settings(settings), settings.model_copy(
            update={"run_retention_days": 14}))
        assert sorted(removed) == sorted([old, failed])
        assert subprocess.run(["test", "-e", folders[old]]).returncode != 0  # removed
        assert subprocess.run(["test", "-e", f"{folders[running]}/out"]).returncode == 0  # still running: kept
        assert retention.sweep(sessions, Vault.from_settings(settings), settings) == []  # done once
        resumed = alice.post(f"/executions/{failed}/resume")
        assert resumed.status_code == 409 and "folder on the site was removed" in error_of(resumed)["message"]
    finally:
        revoke_key("sciuser1", public)
        engine.dispose()
        for folder in folders.values():
            subprocess.run(["rm", "-rf", "--", folder], check=False)
