"""The local stack answers as StackInfo says: OpenBao, the SSH+Slurm site, PostgreSQL.

Integration tests run against the stack started by `python -m hpcwaas.stack up`; the few
tests without a marker check the process plumbing on throwaway processes.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import time
import uuid
from base64 import b64decode
from collections.abc import Callable, Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpcwaas.stack.info import SiteInfo, StackInfo, VaultInfo
from hpcwaas.stack.manager import Stack
from hpcwaas.stack.process import Daemon, StackError, write_secret
from hpcwaas.stack.site_users import authorize_key, revoke_key, validate_public_key

# --------------------------------------------------------------------------------------------
# helpers


def _keypair() -> tuple[paramiko.PKey, str]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{public} stack-test"


def _connect(site: SiteInfo, user: str, key: paramiko.PKey, host_key_line: str | None = None) -> paramiko.SSHClient:
    """Connect with the host key pinned (RejectPolicy: an unknown or different key fails)."""
    kind, blob = (host_key_line or site.host_key).split()[:2]
    client = paramiko.SSHClient()
    pinned = paramiko.PKey.from_type_string(kind, b64decode(blob))
    client.get_host_keys().add(f"[{site.host}]:{site.port}", kind, pinned)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(site.host, port=site.port, username=user, pkey=key, allow_agent=False,
                   look_for_keys=False, timeout=10)
    return client


def _run(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    code = stdout.channel.recv_exit_status()
    return code, stdout.read().decode(), stderr.read().decode()


@pytest.fixture
def site_login(site: SiteInfo) -> Iterator[tuple[paramiko.PKey, str]]:
    """A fresh key authorised for every site user, revoked afterwards."""
    key, public = _keypair()
    for user in site.users:
        assert authorize_key(user.name, public) is True
        assert authorize_key(user.name, public) is False  # idempotent
    yield key, public
    for user in site.users:
        revoke_key(user.name, public)


def _vaults(stack: StackInfo) -> list[VaultInfo]:
    found = []
    for info in (stack.vault_dev, stack.vault_raft):
        if info is None:
            continue
        try:
            hvac.Client(url=info.addr, timeout=2).sys.read_health_status(method="GET")
        except Exception:
            continue  # the raft server is only up after `up --demo`
        found.append(info)
    return found


# --------------------------------------------------------------------------------------------
# OpenBao


@pytest.mark.vault
def test_openbao_is_initialised_unsealed_and_has_the_mount(stack: StackInfo, vault_info: VaultInfo) -> None:
    for info in _vaults(stack):
        with info.operator_token() as token:
            root = hvac.Client(url=info.addr, token=token)
            health = root.sys.read_health_status(method="GET")
            assert health["initialized"] and not health["sealed"]
            mount = root.sys.list_mounted_secrets_engines()["data"][f"{info.mount}/"]
            assert mount["type"] == "kv" and mount["options"]["version"] == "2"
            assert root.sys.list_mounted_secrets_engines()["data"]["hpcwaas-ssh/"]["type"] == "ssh"


@pytest.mark.vault
def test_the_persistent_openbao_keeps_no_root_token(stack: StackInfo) -> None:
    """After `up --demo` no root token of the persistent OpenBao is kept on the host: the operator
    holds the unseal key (root-only), and a root token made from it is revoked after use."""
    info = next((i for i in _vaults(stack) if i.flavour == "raft"), None)
    if info is None:
        pytest.skip("the persistent OpenBao is started by `up --demo`")
    assert not info.root_token_file.exists()
    assert info.init_file is not None and "root_token" not in info.init_file.read_text()
    assert info.init_file.stat().st_mode & 0o077 == 0
    with info.operator_token() as token:
        assert hvac.Client(url=info.addr, token=token).auth.token.lookup_self()["data"]["policies"] == ["root"]
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=info.addr, token=token).auth.token.lookup_self()


@pytest.mark.vault
def test_gateway_token_is_limited_to_its_mount(stack: StackInfo, vault_info: VaultInfo) -> None:
    for info in _vaults(stack):
        gw = hvac.Client(url=info.addr, token=info.gateway_token())
        me = gw.auth.token.lookup_self()["data"]
        assert me["policies"] == [info.policy]
        assert me["orphan"] is True and me["period"] > 0

        kv = gw.secrets.kv.v2
        path = f"stack-tests/{uuid.uuid4().hex}"
        kv.create_or_update_secret(path, {"v": "1"}, mount_point=info.mount)
        assert kv.read_secret_version(path, mount_point=info.mount, raise_on_deleted_version=True)["data"][
            "data"
        ] == {"v": "1"}
        assert path.split("/")[1] in kv.list_secrets("stack-tests", mount_point=info.mount)["data"]["keys"]
        kv.delete_metadata_and_all_versions(path, mount_point=info.mount)

        wrapped = gw.adapter.post("/v1/sys/wrapping/wrap", json={"x": "y"}, headers={"X-Vault-Wrap-TTL": "60s"})
        token = wrapped["wrap_info"]["token"]
        assert hvac.Client(url=info.addr, token=token).sys.unwrap()["data"] == {"x": "y"}

        for attempt in _outside_the_policy(gw, info):
            with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
                attempt()


def _outside_the_policy(gw: hvac.Client, info: VaultInfo) -> list[Callable[[], object]]:
    """Calls the gateway token must not be allowed to make."""
    return [
        lambda: gw.sys.enable_secrets_engine("kv", path=f"other-{uuid.uuid4().hex[:6]}"),
        lambda: gw.sys.create_or_update_policy("evil", 'path "*" { capabilities = ["sudo"] }'),
        lambda: gw.sys.list_mounted_secrets_engines(),
        lambda: gw.auth.token.create(policies=[info.policy]),
        lambda: gw.adapter.post("/v1/secret/data/outside", json={"data": {"v": 1}}),
        lambda: gw.adapter.post("/v1/cubbyhole/outside", json={"v": 1}),
    ]


# --------------------------------------------------------------------------------------------
# The site: sshd + Slurm + accounting


@pytest.mark.site
def test_site_pins_host_key_and_rejects_another(site: SiteInfo, site_login: tuple[paramiko.PKey, str]) -> None:
    key, _ = site_login
    _other, other_public = _keypair()
    with pytest.raises(paramiko.BadHostKeyException):
        _connect(site, site.users[0].name, key, host_key_line=other_public)
    unknown = paramiko.SSHClient()
    unknown.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        unknown.connect(site.host, port=site.port, username=site.users[0].name, pkey=key,
                        allow_agent=False, look_for_keys=False, timeout=10)
    unknown.close()


@pytest.mark.site
@pytest.mark.slow
def test_site_user_runs_slurm_jobs_and_reads_accounting(
    site: SiteInfo, site_login: tuple[paramiko.PKey, str]
) -> None:
    key, _ = site_login
    user, other = site.users[0], site.users[1]
    with _connect(site, user.name, key) as ssh:
        code, out, err = _run(ssh, "id -un; echo $SLURM_CONF; sinfo -h -o '%P %a'")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == user.name and lines[1] == str(site.slurm_conf)
        partitions = dict(line.split() for line in lines[2:])
        assert partitions == {f"{site.default_partition}*": "up",
                              **{p: "up" for p in site.partitions if p != site.default_partition}}

        tag = uuid.uuid4().hex[:8]
        code, out, err = _run(
            ssh,
            f"cd {user.work_dir} && sbatch --parsable --wait -p batch -J stack-{tag} "
            f"-o stack-test-%j.out --wrap 'echo hello-{tag}'",
        )
        assert code == 0, err
        job_id = out.strip().split(";")[0]
        output = f"{user.work_dir}/stack-test-{job_id}.out"
        code, out, _ = _run(ssh, f"cat {output} && rm {output}")
        assert out.strip() == f"hello-{tag}"

    # sacct is eventually consistent (a few seconds behind); another site user can read it too.
    with _connect(site, other.name, key) as ssh:
        expected = f"{job_id}|stack-{tag}|{user.name}|batch|COMPLETED|0:0"
        deadline = time.monotonic() + 30
        record = ""
        while time.monotonic() < deadline:
            _code, record, _err = _run(
                ssh, f"sacct -j {job_id} -X -n -P --format=JobID,JobName,User,Partition,State,ExitCode"
            )
            # Right after the job, sacct may still show a partial record (JobName=allocation).
            if record.strip() == expected:
                break
            time.sleep(0.5)
        assert record.strip() == expected


@pytest.mark.site
def test_authorize_key_refuses_bad_input(site: SiteInfo) -> None:
    with pytest.raises(StackError):
        validate_public_key("not a key")
    with pytest.raises(StackError):
        validate_public_key('command="rm -rf /" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGmOTCqsiOY6c9GI05upm29/Dt9C2')
    _key, public = _keypair()
    with pytest.raises(StackError):
        authorize_key("root", public)
    with pytest.raises(StackError):
        validate_public_key(public + "\n" + public)


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.postgres
def test_postgres_role_connects_and_creates_databases(stack: StackInfo) -> None:
    import psycopg

    assert stack.postgres is not None, "run `python -m hpcwaas.stack up`"
    pg = stack.postgres
    assert pg.password() not in pg.url
    with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (pg.user, pg.database)
        scratch = f"stack_test_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE DATABASE {scratch}")
        conn.execute(f"DROP DATABASE {scratch}")
    bad = {**pg.conninfo(), "password": "wrong"}
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Secrets: 0600 files only, never in a process's arguments


@pytest.mark.vault
@pytest.mark.site
@pytest.mark.postgres
def test_secrets_only_in_0600_files_never_in_argv(stack: StackInfo, vault_info: VaultInfo) -> None:
    files: list[Path] = []
    for info in (stack.vault_dev, stack.vault_raft):
        if info is not None and info.root_token_file.exists():
            files += [info.root_token_file, info.gateway_token_file]
    if stack.postgres is not None:
        files.append(stack.postgres.password_file)
    files += sorted(stack.stack_dir.glob("*/init.json"))
    files += [p for p in stack.stack_dir.glob("slurm/**/*") if p.name.endswith((".password", ".key"))]
    files.append(stack.stack_dir / "slurm" / "slurmdbd.conf")
    secrets: list[str] = []
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"
        if path.suffix in (".json", ".conf", ".key"):
            continue
        secrets.append(path.read_text().strip())
    assert secrets
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for secret in secrets:
            assert secret not in argv, f"a secret is in the arguments of pid {pid}"


# --------------------------------------------------------------------------------------------
# Process plumbing (no stack needed)


def test_stale_pid_file_is_detected_and_cleared(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        daemon = Daemon("fake", "sshd", tmp_path / "fake.pid", tmp_path / "fake.log")
        (tmp_path / "fake.pid").write_text(f"{sleeper.pid}\n")
        assert daemon.pid() is None and daemon.state() == "stale"  # a live pid, but another program
        assert daemon.stop() is False and sleeper.poll() is None  # never signals a stranger
        assert daemon.state() == "stopped"
        (tmp_path / "fake.pid").write_text("999999999\n")
        assert daemon.state() == "stale"
        daemon.clear_stale()
        assert not (tmp_path / "fake.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_daemon_start_and_stop_by_pid(tmp_path: Path) -> None:
    daemon = Daemon("sleeper", "sleep", tmp_path / "s.pid", tmp_path / "s.log", marker="31337")
    daemon.spawn(["sleep", "31337"])
    pid = daemon.wait_running(5)
    assert daemon.state() == "running"
    assert daemon.stop() is True
    assert daemon.state() == "stopped" and not (tmp_path / "s.pid").exists()
    assert not Path(f"/proc/{pid}/cmdline").exists() or b"31337" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_secret_files_are_0600_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "s", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o600


def test_status_lists_every_registered_process(tmp_path: Path) -> None:
    rows = Stack(tmp_path).status()
    assert {r.service for r in rows} >= {"openbao-dev", "openbao-raft", "sshd", "slurm", "postgres"}
    assert all(r.state == "stopped" for r in rows)
