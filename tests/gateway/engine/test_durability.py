"""The engine's durability, with real processes on the real stack (issue 7's acceptance items).

- Crash tests: the gateway (a separate `waas admin serve` process, engine inside, SQLite) is
  SIGKILLed during stage-in, during the Slurm job and during stage-out of an execution, then
  restarted; the execution completes, Slurm's accounting holds exactly one job for its step and
  Airflow exactly one DAG run per staging step.
- Several `waas worker` processes on PostgreSQL share the executions through leases, none is run
  twice, and when a worker is SIGKILLed holding a lease the other takes the record over once the
  lease has expired, with no second sbatch.
- Long monitoring costs little: with many executions waiting on their jobs, a worker holds no SSH
  connection between polls and no thread per execution.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy import select

from data_logistics.client import AirflowClient
from gateway.core.db import make_engine, make_session_factory
from gateway.main import create_app
from gateway.persistence.models import Execution, LogLine
from hpcwaas.settings import Settings
from hpcwaas.ssh import SiteEndpoint, connect, generate_keypair
from hpcwaas.stack.info import SiteInfo, StackInfo, VaultInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.fixtures.processes import Account, Proc, Processes, engine_env, free_port, seed_people, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.site, pytest.mark.vault]
FIXTURE = Path(__file__).parent / "fixtures" / "staged-job"
LOGIN = "sciuser1"  # the developer's and the scientist's site account (keys of their own)
TEXT = "the quick brown fox jumps over the lazy dog\nand then it sleeps on the mat\n"
TERMINAL = ("completed", "failed", "cancelled")


# -- small tools --------------------------------------------------------------------------------


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str,
             every: float = 0.2) -> Any:
    """Poll ``fetch`` until ``done``; connection errors (a gateway being restarted) are retried."""
    deadline = time.monotonic() + timeout
    current: Any = None
    while True:
        with contextlib.suppress(httpx.TransportError):
            current = fetch()
            if done(current):
                return current
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {json.dumps(current)[:3000]}")
        time.sleep(every)


def client_for(base: str | TestClient, account: Account) -> Any:
    """An HTTP client of the API as ``account``: to a gateway process, or an in-process app."""
    headers = {"Authorization": f"Bearer {account.token}"}
    if isinstance(base, TestClient):
        return _TokenClient(base, headers)
    return httpx.Client(base_url=base, headers=headers, timeout=30)


class _TokenClient:
    """A TestClient seen through one account's token."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.get(url, headers=self.headers, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.post(url, headers=self.headers, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.client.delete(url, headers=self.headers, **kw)


@contextlib.contextmanager
def site_shell(site: SiteInfo, login: str) -> Iterator[Any]:
    """An SSH session as a site user, with a throwaway key authorized for the duration."""
    probe = generate_keypair()
    authorize_key(login, probe.public.line)
    try:
        with connect(SiteEndpoint(site.host, site.port, site.host_key), login, probe.private_key) as ssh:
            yield ssh
    finally:
        revoke_key(login, probe.public.line)


def slurm_jobs(ssh: Any, execution_ids: list[str], expect_each: int = 1, timeout: float = 30) -> dict[str, list[str]]:
    """Slurm accounting's jobs of each execution (by the tag `hpcwaas:<execution id>:...` in the
    job's comment), asked until every execution has at least ``expect_each`` (accounting lags)."""
    deadline = time.monotonic() + timeout
    while True:
        out = ssh.run(["sacct", "-n", "-P", "-X", "--starttime=now-2hours", "--format=JobID,JobName,Comment,State"],
                      timeout=60).stdout
        jobs: dict[str, list[str]] = {eid: [] for eid in execution_ids}
        for line in out.splitlines():
            job_id, _name, comment, _state = [*line.split("|"), "", "", ""][:4]
            for eid in execution_ids:
                if comment.startswith(f"hpcwaas:{eid}:"):
                    jobs[eid].append(job_id)
        if all(len(v) >= expect_each for v in jobs.values()) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def dag_runs(airflow: AirflowClient, pipeline: str, user_id: str, execution_id: str) -> list[str]:
    """Airflow's runs of a pipeline started for this user and this execution (its id is in the
    run's label or target)."""
    return [run["dag_run_id"] for run in airflow.list_runs(pipeline, limit=200)
            if (run.get("conf") or {}).get("requested_by") == user_id and execution_id in json.dumps(run["conf"])]


def log_texts(api: httpx.Client, execution_id: str) -> list[str]:
    return [line["text"] for line in api.get(f"/executions/{execution_id}/logs").json()["lines"]]


def step(execution: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The execution's entry for a workflow step (``execute.<step>#<n>:<node>:<op>``), op first."""
    def step_of(entry: str) -> str:
        return entry.split(":")[0].split(".", 1)[-1].split("#")[0]
    return next((s for s in execution["steps"] if step_of(s["name"]) == name), None)


@dataclass
class Deployed:
    """A deployed staged-job workflow, the people using it and how to reach the API."""

    name: str
    people: dict[str, Account]
    alice_key: str
    database_url: str
    api: Callable[[Account], httpx.Client]
    keys: list[str] = field(default_factory=list)


def deploy(api: Callable[[Account], httpx.Client], people: dict[str, Account], site: SiteInfo,
           registry: Path, database_url: str) -> Deployed:
    admin, dave, alice = api(people["admin"]), api(people["dave"]), api(people["alice"])
    assert admin.post("/sites", json={"name": "local", "login_host": site.host, "port": site.port,
                                      "partitions": site.partitions, "work_dir": "/home/{login}/hpcwaas",
                                      "host_key": site.host_key}).status_code == 201
    name = f"durable-{uuid.uuid4().hex[:6]}"
    shutil.copytree(FIXTURE, registry / name)
    resp = dave.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(registry / name)}})
    assert resp.status_code == 201, resp.text
    dave_key = dave.post("/ssh_keys", json={"login": LOGIN}).json()
    alice_key = alice.post("/ssh_keys", json={"login": LOGIN}).json()
    for key in (dave_key, alice_key):
        authorize_key(LOGIN, key["public_key"])
    resp = dave.post("/deployments", json={"workflow": name, "site": "local", "ssh_key": dave_key["id"]})
    assert resp.status_code == 202, resp.text
    location = resp.headers["Location"]
    deployment = wait_for(lambda: dave.get(location).json(), lambda d: d["state"] in ("deployed", "failed"), 180,
                          "the deployment")
    assert deployment["state"] == "deployed", (deployment, dave.get(f"{location}/logs").json())
    return Deployed(name, people, alice_key["id"], database_url, api,
                    keys=[dave_key["public_key"], alice_key["public_key"]])


def invoke(deployed: Deployed, inputs: dict[str, Any], tosca_workflow: str = "execute") -> str:
    alice = deployed.api(deployed.people["alice"])
    resp = alice.post(f"/workflows/{deployed.name}/executions",
                      json={"inputs": inputs, "ssh_key": deployed.alice_key, "tosca_workflow": tosca_workflow})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


# -- 1. crash tests: the gateway SIGKILLed during stage-in, the job and stage-out ----------------


@dataclass
class CrashRig:
    deployed: Deployed
    gateway: Proc
    url: str
    dataset: str
    airflow: AirflowClient
    registry: Path


@pytest.fixture(scope="module")
def crash_rig(tmp_path_factory: pytest.TempPathFactory, stack: StackInfo, vault_info: VaultInfo,
              site: SiteInfo) -> Iterator[CrashRig]:
    if stack.airflow is None:
        pytest.fail("the stack needs Airflow: make stack-up", pytrace=False)
    folder = tmp_path_factory.mktemp("crash")
    registry = folder / "registry"
    registry.mkdir()
    database_url = f"sqlite:///{folder / 'gateway.db'}"
    people = seed_people(database_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = engine_env(database_url, vault_info, folder / "home", [registry], lease_seconds=5, poll_seconds=0.2)
    group = Processes(folder)
    deployed: Deployed | None = None
    try:
        gateway = group.gateway(env, port).start()
        wait_http(url, gateway)
        deployed = deploy(lambda a: client_for(url, a), people, site, registry, database_url)
        data = stack.airflow.storage_root / "datasets" / uuid.uuid4().hex[:8]
        data.mkdir(parents=True)
        (data / "words.txt").write_text(TEXT)
        resp = deployed.api(people["alice"]).post("/catalogue/datasets", json={
            "title": "Words to count", "description": "For the crash tests.", "location": f"file://{data}/words.txt",
            "format": "text/plain", "access": "restricted", "keywords": ["test"],
            "checksum_sha256": hashlib.sha256(TEXT.encode()).hexdigest(), "size_bytes": len(TEXT.encode())})
        assert resp.status_code == 201, resp.text
        yield CrashRig(deployed, gateway, url, resp.json()["id"], AirflowClient.from_settings(Settings()), registry)
    finally:
        group.kill_all()
        for key in deployed.keys if deployed else []:
            revoke_key(LOGIN, key)


def _in_flight(phase: str) -> Callable[[dict[str, Any]], bool]:
    """The execution is in ``phase``: its step started (a DAG run or a job id recorded), not ended."""
    def check(execution: dict[str, Any]) -> bool:
        assert execution["state"] not in TERMINAL, f"ended before the kill: {execution}"
        current = step(execution, phase)
        if current is None or current["state"] in ("done", "failed"):
            return False
        return bool(current.get("pipeline_run_id") or current.get("job_id"))
    return check


@pytest.mark.parametrize("phase", ["stage_in", "count", "stage_out"])
def test_gateway_sigkilled_mid_execution_resumes_without_repeating(crash_rig: CrashRig, site: SiteInfo,
                                                                   phase: str) -> None:
    rig = crash_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    execution_id = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 12 if phase == "count" else 1})
    url = f"/executions/{execution_id}"
    wait_for(lambda: alice.get(url).json(), _in_flight(phase), 120, f"{phase} to start", every=0.1)

    rig.gateway.kill()
    killed = time.monotonic()
    rig.gateway.start()
    wait_http(rig.url, rig.gateway)
    execution = wait_for(lambda: alice.get(url).json(), lambda e: e["state"] in TERMINAL, 180,
                         "the execution after the restart")
    took = time.monotonic() - killed
    logs = log_texts(alice, execution_id)
    assert execution["state"] == "completed", (execution["error"], execution["steps"], logs[-30:],
                                               rig.gateway.log_tail())
    assert execution["outputs"]["words"].strip() == str(len(TEXT.split())), execution["outputs"]
    assert alice.get(f"/catalogue/datasets/{execution['outputs']['result_dataset']}").status_code == 200

    # One Slurm job for the one batch step, seen by the scheduler's accounting, and submitted once.
    with site_shell(site, LOGIN) as ssh:
        jobs = slurm_jobs(ssh, [execution_id])[execution_id]
    counted = step(execution, "count")
    assert counted is not None and jobs == [counted["job_id"]], (jobs, execution["steps"])
    assert sum("submitted job" in line for line in logs) == 1, logs
    # One DAG run per staging step, the one the execution recorded.
    people = rig.deployed.people
    for pipeline in ("stage_in", "stage_out"):
        runs = dag_runs(rig.airflow, pipeline, people["alice"].id, execution_id)
        recorded = step(execution, pipeline)
        assert recorded is not None and runs == [recorded["pipeline_run_id"]], (pipeline, runs, execution["steps"])
        assert sum(f"{pipeline} run" in line and "started" in line and "already" not in line for line in logs) == 1
    print(f"\n{phase}: killed, restarted and completed in {took:.1f} s")


CYCLE = """tosca_definitions_version: tosca_simple_yaml_1_3
node_types:
  x.A: {derived_from: x.B}
  x.B: {derived_from: x.A}
topology_template:
  node_templates:
    a: {type: x.A}
"""


def test_a_type_cycle_is_refused_while_others_work_and_sigterm_ends_a_busy_gateway(crash_rig: CrashRig) -> None:
    """tosca-parser never finishes on a type deriving from itself; the gateway names the cycle at
    once, other registrations and executions go on meanwhile, and SIGTERM still stops it."""
    rig = crash_rig
    dave, alice = (rig.deployed.api(rig.deployed.people[who]) for who in ("dave", "alice"))
    bad = rig.registry / f"cycle-{uuid.uuid4().hex[:6]}"
    bad.mkdir()
    (bad / "service.yaml").write_text(CYCLE)
    good = rig.registry / f"good-{uuid.uuid4().hex[:6]}"
    shutil.copytree(rig.registry / rig.deployed.name, good)
    execution_id = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 1})
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        refused = [pool.submit(dave.post, "/workflows", json={"name": f"{bad.name}-{i}",
                                                              "source": {"kind": "folder", "path": str(bad)}})
                   for i in range(3)]
        accepted = pool.submit(dave.post, "/workflows", json={"name": good.name,
                                                              "source": {"kind": "folder", "path": str(good)}})
        for future in refused:
            resp = future.result(timeout=20)
            assert resp.status_code == 422 and "x.A -> x.B -> x.A" in resp.text, resp.text
        assert accepted.result(timeout=20).status_code == 201, accepted.result().text
    assert time.monotonic() - began < 10
    execution = wait_for(lambda: alice.get(f"/executions/{execution_id}").json(), lambda e: e["state"] in TERMINAL,
                         180, "the execution beside the refused registrations")
    assert execution["state"] == "completed", execution["error"]

    # Busy: a long job's live log stream stays open; SIGTERM ends the gateway within 10 s anyway.
    busy = invoke(rig.deployed, {"dataset": rig.dataset, "nap": 30})
    opened = threading.Event()

    def follow() -> None:
        with contextlib.suppress(httpx.HTTPError), alice.stream("GET", f"/executions/{busy}/logs/stream") as live:
            opened.set()
            for _ in live.iter_lines():
                pass

    threading.Thread(target=follow, daemon=True).start()
    assert opened.wait(10)
    assert rig.gateway.popen is not None
    rig.gateway.popen.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    rig.gateway.popen.wait(30)
    assert time.monotonic() - stopping < 10, rig.gateway.log_tail()
    rig.gateway.start()
    wait_http(rig.url, rig.gateway)
    execution = wait_for(lambda: alice.get(f"/executions/{busy}").json(), lambda e: e["state"] in TERMINAL, 180,
                         "the busy execution after the restart")
    assert execution["state"] == "completed", execution["error"]


# -- 2. several workers on PostgreSQL; a dead worker's leases are taken over ----------------------


@dataclass
class WorkerRig:
    deployed: Deployed
    group: Processes
    env: dict[str, str]
    sessions: Any


@pytest.fixture(scope="module")
def worker_rig(tmp_path_factory: pytest.TempPathFactory, stack: StackInfo, vault_info: VaultInfo,
               site: SiteInfo) -> Iterator[WorkerRig]:
    pg = stack.postgres
    if pg is None:
        pytest.fail("the stack has no PostgreSQL; run `make stack-up`", pytrace=False)
    name = f"hpcwaas_durable_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = pg.sqlalchemy_url(name)
    folder = tmp_path_factory.mktemp("workers")
    registry = folder / "registry"
    registry.mkdir()
    people = seed_people(database_url)
    env = engine_env(database_url, vault_info, folder / "home", [registry], lease_seconds=5, poll_seconds=0.2)
    # The API alone (engine off), as replicas behind a load balancer would be; workers do the work.
    settings = Settings(home=folder / "home", database_url=database_url, registry_roots=[registry],
                        vault_addr=vault_info.addr, vault_token_file=vault_info.gateway_token_file,
                        vault_mount=vault_info.mount, ssh_connect_timeout=5, engine_in_gateway=False)
    engine = make_engine(database_url)
    group = Processes(folder)
    deployed: Deployed | None = None
    try:
        with TestClient(create_app(settings)) as client:
            installer = group.worker(env, 2, "installer").start()
            deployed = deploy(lambda a: client_for(client, a), people, site, registry, database_url)
            installer.kill()
            yield WorkerRig(deployed, group, env, make_session_factory(engine))
    finally:
        group.kill_all()
        for key in deployed.keys if deployed else []:
            revoke_key(LOGIN, key)
        engine.dispose()
        with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class LeaseWatch:
    """Samples who holds the lease of each execution, every few milliseconds, in a thread."""

    def __init__(self, sessions: Any, ids: list[str], every: float = 0.02) -> None:
        self.sessions, self.ids, self.every = sessions, list(ids), every
        self.seen: dict[str, list[tuple[float, str, datetime | None]]] = {i: [] for i in ids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.sessions() as db:
                rows = db.execute(select(Execution.id, Execution.lease_owner, Execution.lease_expires_at)
                                  .where(Execution.id.in_(self.ids))).all()
            now = time.time()
            for eid, owner, expires in rows:
                if owner and (not self.seen[eid] or self.seen[eid][-1][1] != owner):
                    self.seen[eid].append((now, owner, expires))
            time.sleep(self.every)

    def owners(self) -> set[str]:
        return {owner for samples in self.seen.values() for _, owner, _ in samples}


def _pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


def _submissions(sessions: Any, execution_id: str) -> int:
    with sessions() as db:
        texts = db.scalars(select(LogLine.text).where(LogLine.subject_id == execution_id)).all()
    return sum("submitted job" in text for text in texts)


def _states(api: httpx.Client, ids: list[str]) -> dict[str, str]:
    return {eid: api.get(f"/executions/{eid}").json()["state"] for eid in ids}


@pytest.mark.postgres
def test_workers_share_executions_and_take_over_a_dead_workers_leases(worker_rig: WorkerRig,
                                                                      site: SiteInfo) -> None:
    rig = worker_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    a = rig.group.worker(rig.env, 2, "worker-a").start()
    b = rig.group.worker(rig.env, 2, "worker-b").start()

    # Shared work: each execution is advanced by whichever worker claims it; none runs twice.
    first = [invoke(rig.deployed, {"nap": 3}, "nap") for _ in range(6)]
    with LeaseWatch(rig.sessions, first) as watch:
        final = wait_for(lambda: _states(alice, first), lambda s: all(v in TERMINAL for v in s.values()), 120,
                         "the first executions")
    assert set(final.values()) == {"completed"}, final
    pids = {_pid_of(owner) for owner in watch.owners()}
    assert pids == {a.pid, b.pid}, (pids, a.pid, b.pid)
    by_worker = {pid: sum(any(_pid_of(o) == pid for _, o, _ in watch.seen[e]) for e in first) for pid in pids}
    assert all(n > 0 for n in by_worker.values()), by_worker

    # A worker SIGKILLed while it holds a lease: the record waits for the lease to expire, then the
    # other worker takes it over and finishes it, with no second sbatch.
    second = [invoke(rig.deployed, {"nap": 6}, "nap") for _ in range(4)]
    with LeaseWatch(rig.sessions, second, every=0.005) as watch:
        def held_by_a() -> tuple[str, datetime] | None:
            with rig.sessions() as db:
                row = db.execute(select(Execution.id, Execution.lease_expires_at)
                                 .where(Execution.id.in_(second), Execution.lease_owner.like(f"%:{a.pid}:%"))
                                 ).first()
            return (row[0], row[1]) if row else None
        victim = wait_for(held_by_a, lambda r: r is not None, 60, "worker A to hold a lease", every=0.005)
        a.kill()
        killed_at = time.time()
        victim_id, expires = victim
        final = wait_for(lambda: _states(alice, second), lambda s: all(v in TERMINAL for v in s.values()), 120,
                         "the executions after worker A died")
    assert set(final.values()) == {"completed"}, (final, b.log_tail())
    with rig.sessions() as db:
        current_expiry = db.scalar(select(Execution.lease_expires_at).where(Execution.id == victim_id))
    assert current_expiry is None  # released at the end by B
    takeover = [(t, o) for t, o, _ in watch.seen[victim_id] if _pid_of(o) == b.pid and t > killed_at]
    assert takeover, watch.seen[victim_id]
    expiry = (expires.replace(tzinfo=UTC) if expires.tzinfo is None else expires).timestamp()
    assert takeover[0][0] >= expiry - 0.5, ("taken over before the lease expired", takeover[0][0], expiry)
    print(f"\nvictim {victim_id} taken over {takeover[0][0] - killed_at:.1f} s after the kill "
          f"(lease ran out {expiry - killed_at:.1f} s after it)")

    with site_shell(site, LOGIN) as ssh:
        jobs = slurm_jobs(ssh, first + second)
    assert {eid: len(ids) for eid, ids in jobs.items()} == dict.fromkeys(first + second, 1), jobs
    assert all(_submissions(rig.sessions, eid) == 1 for eid in first + second)


# -- 3. long monitoring costs little ---------------------------------------------------------------


def _ssh_connections(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:<port> owned by the process (its sockets' inodes)."""
    import os

    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                remote, state, inode = parts[2], parts[3], parts[9]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in inodes:
                    count += 1
    return count


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _leases_held(sessions: Any, pid: int) -> int:
    with sessions() as db:
        return len(db.scalars(select(Execution.id).where(Execution.lease_owner.like(f"%:{pid}:%"))).all())


@pytest.mark.postgres
def test_waiting_executions_hold_no_thread_and_no_ssh_connection(worker_rig: WorkerRig, site: SiteInfo) -> None:
    rig = worker_rig
    alice = rig.deployed.api(rig.deployed.people["alice"])
    pool, k = 2, 10
    worker = rig.group.worker(rig.env, pool, "monitor").start()
    wait_for(lambda: worker.log_tail(5), lambda t: "running with" in t, 60, "the worker to start")
    time.sleep(1)
    idle_threads = _threads(worker.pid)
    ids = [invoke(rig.deployed, {"nap": 120}, "watch") for _ in range(k)]
    try:
        wait_for(lambda: [alice.get(f"/executions/{i}").json() for i in ids],
                 lambda es: all(any(s.get("job_id") for s in e["steps"]) for e in es), 90, "every job submitted")
        # Sample the worker: SSH connections to the site and threads, and whether it was advancing a
        # record at that moment (holding a lease just before and just after the sample).
        samples: list[tuple[bool, int, int]] = []
        cpu0, t0 = _cpu_seconds(worker.pid), time.monotonic()
        while time.monotonic() - t0 < 10:
            before = _leases_held(rig.sessions, worker.pid)
            connections, threads = _ssh_connections(worker.pid, site.port), _threads(worker.pid)
            busy = before > 0 or _leases_held(rig.sessions, worker.pid) > 0
            samples.append((busy, connections, threads))
            time.sleep(0.02)
        cpu = (_cpu_seconds(worker.pid) - cpu0) / (time.monotonic() - t0)
        assert _states(alice, ids) == dict.fromkeys(ids, "running")
    finally:
        for eid in ids:
            alice.delete(f"/executions/{eid}")
    quiet = [s for s in samples if not s[0]]
    print(f"\n{k} waiting executions, pool {pool}: {len(quiet)}/{len(samples)} samples between polls; "
          f"SSH connections max {max(s[1] for s in samples)} (between polls {max((s[1] for s in quiet), default=0)}); "
          f"threads idle {idle_threads}, max {max(s[2] for s in samples)} "
          f"(between polls {max((s[2] for s in quiet), default=0)}); worker CPU {cpu:.0%}")
    # Between polls, a waiting execution costs a row in the database: no connection, no thread of
    # its own (paramiko does not join a closed transport's thread, so one may still be ending).
    assert len(quiet) >= 5, "the worker was never between polls"
    assert all(connections == 0 for _, connections, _ in quiet), quiet
    assert statistics.median(threads for _, _, threads in quiet) == idle_threads, (idle_threads, quiet)
    assert max(threads for _, _, threads in quiet) <= idle_threads + pool, (idle_threads, quiet)
    # While polling, at most one short SSH session per pool thread, and threads bounded by the pool
    # (per busy slot: the lease heartbeat, the operation, the SSH transport, one ending), whatever
    # the number of executions waiting.
    assert max(connections for _, connections, _ in samples) <= pool
    assert max(threads for _, _, threads in samples) <= idle_threads + 4 * pool, (idle_threads, samples)
    assert cpu < 0.75, cpu
    wait_for(lambda: _states(alice, ids), lambda s: all(v in TERMINAL for v in s.values()), 60,
             "the cancellations")
