"""After the rest of the suite (and the demo, when it ran): private keys live only in Vault.

Every SSH private key stored in the stack's OpenBao servers is read with the root token, and a
distinctive piece of each is searched for in the gateway databases, the stack's files and logs
(databases, Slurm and sshd logs, OpenBao's own storage, which is encrypted), the test
artifacts, the gateway's home folders, and the command lines and environments of all processes.
conftest.py runs this module last.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import ahocorasick
import hvac
import pytest

from hpcwaas.stack.info import StackInfo, VaultInfo

MAX_FILE = 512 * 1024 * 1024
# Installed software trees (virtualenvs, the Debian tree Apptainer runs from) hold no state.
SKIP_DIRS = {"venv", ".venv", "site-packages", "sid", "sidroot", "node_modules"}


def _stored_private_keys(info: VaultInfo) -> list[str]:
    with info.operator_token() as token:
        return _read_private_keys(hvac.Client(url=info.addr, token=token), info.mount)


def _read_private_keys(client: hvac.Client, mount: str) -> list[str]:
    kv = client.secrets.kv.v2
    keys: list[str] = []
    try:
        users = kv.list_secrets(path="users", mount_point=mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return keys
    for user in users:
        try:
            ids = kv.list_secrets(path=f"users/{user.rstrip('/')}/ssh", mount_point=mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            continue
        for key_id in ids:
            secret = kv.read_secret_version(path=f"users/{user.rstrip('/')}/ssh/{key_id}", mount_point=mount,
                                            raise_on_deleted_version=True)
            keys.append(secret["data"]["data"]["private_key"])
    return keys


def _needle(private_key: str) -> bytes:
    # The second-to-last body line of an OpenSSH PEM lies in the private section (never the
    # public key blob, which sits at the start and is public anyway).
    body = [line for line in private_key.strip().splitlines() if not line.startswith("-----")]
    return body[-2].encode() if len(body) >= 2 else body[-1].encode()


def _files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def test_private_keys_appear_nowhere_but_vault(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> None:
    private_keys: list[str] = []
    for flavour in ("dev", "raft"):
        info = stack.vault_dev if flavour == "dev" else stack.vault_raft
        if info is not None:
            try:
                private_keys += _stored_private_keys(info)
            except Exception as exc:  # a stopped raft server is not a leak
                if flavour == "dev":
                    raise
                print(f"skipping the raft OpenBao: {exc}")
    assert private_keys, "the suite should have stored SSH keys in Vault before this test"
    # Aho-Corasick finds any of hundreds of needles in one pass (a regex alternation is far slower).
    automaton = ahocorasick.Automaton()
    for key in private_keys:
        needle = _needle(key).decode()
        automaton.add_word(needle, needle)
    automaton.make_automaton()

    def leaks(data: bytes) -> bool:
        return next(automaton.iter(data.decode("latin-1")), None) is not None

    roots = [
        stack.stack_dir,
        tmp_path_factory.getbasetemp(),
        Path.home() / ".local" / "share" / "hpcwaas",
        Path(__file__).resolve().parents[1] / "test-artifacts",
    ]
    found: list[str] = []
    scanned = 0
    for path in _files(roots):
        try:
            if path.stat().st_size > MAX_FILE:
                continue
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        if leaks(data):
            found.append(str(path))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:
                continue
            if leaks(data):
                found.append(f"/proc/{pid}/{what}")
    assert scanned > 50, "the search should have covered the stack's files"
    assert not found, f"private key material found outside Vault: {found}"


def test_postgres_databases_hold_no_private_key(stack: StackInfo) -> None:
    import psycopg

    if stack.postgres is None or stack.vault_dev is None:
        pytest.skip("no PostgreSQL or OpenBao in the stack")
    needles = [_needle(k).decode() for k in _stored_private_keys(stack.vault_dev)]
    with psycopg.connect(**stack.postgres.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'hpcwaas%'")]
    for db in databases:
        with psycopg.connect(**stack.postgres.conninfo(db), autocommit=True) as conn:  # type: ignore[arg-type]
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            for table in tables:
                rows = conn.execute(f'SELECT CAST(t AS text) FROM "{table}" AS t').fetchall()
                text = "\n".join(r[0] for r in rows)
                assert not any(n in text for n in needles), f"private key material in {db}.{table}"
