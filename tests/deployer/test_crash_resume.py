"""SIGKILL the deployer CLI mid-deploy, resume, and check every operation ran exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deployer import api

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m deployer`` in its own process group (so a kill takes its children too)."""
    return subprocess.Popen([sys.executable, "-m", "deployer", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def read_state(state: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state / "state.json").read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(predicate: Any, timeout: float = 120.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def op_status(state: Path, key: str) -> str | None:
    data = read_state(state)
    if not data or not data["runs"]:
        return None
    op = data["runs"][-1]["ops"].get(key)
    return op["status"] if op else None


@pytest.mark.parametrize("kill_after", [0.0, 0.8], ids=["before-playbook", "mid-playbook"])
def test_sigkill_mid_deploy_then_resume(marker_project, tmp_path: Path, kill_after: float) -> None:
    tpl, marker = marker_project(n_chain=4, delay=1.5)
    state = tmp_path / "state"
    proc = cli("deploy", str(tpl), "--state", str(state), "--workers", "1")
    wait_for(lambda: op_status(state, "c1:Standard.create") == "running", what="c1 to start")
    time.sleep(kill_after)
    kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    # c0 finished before the kill, c1 did not append yet (it sleeps first)
    assert marker.read_text().split() == ["c0"]
    record = api.load_record(state)
    assert record.runs[-1].status == "running"

    # a plain deploy refuses: the run was interrupted
    again = subprocess.run([sys.executable, "-m", "deployer", "deploy", str(tpl), "--state", str(state)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--resume" in again.stderr

    resumed = subprocess.run([sys.executable, "-m", "deployer", "deploy", str(tpl), "--state", str(state),
                              "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert marker.read_text().split() == ["c0", "c1", "c2", "c3"]  # each exactly once, in order
    record = api.load_record(state)
    ops = record.runs[-1].ops
    assert ops["c0:Standard.create"].attempts == 1
    assert ops["c1:Standard.create"].attempts == 2  # interrupted, then run again on resume
    assert all(op.status == "done" for op in ops.values())
    assert record.status == "deployed" and len(record.runs) == 1
