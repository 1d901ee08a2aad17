"""PostgreSQL 15 on 127.0.0.1:15432, run as the ``postgres`` OS user from a private data dir.

The ``hpcwaas`` role logs in with a SCRAM password (random, kept in a 0600 file) and may create
databases, so tests can make throwaway ones. The role is created over the private unix socket
(peer auth as ``postgres``) with a pre-computed SCRAM verifier on psql's stdin: the password is
never in argv, in the server log, or in the server at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import signal
from pathlib import Path

from hpcwaas.stack.base import Service, register
from hpcwaas.stack.info import PostgresInfo, StackInfo
from hpcwaas.stack.process import (
    Daemon,
    ensure_dir,
    new_password,
    read_secret,
    run,
    wait_until,
    write_file,
    write_secret,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"
PORT = 15432
ROLE = "hpcwaas"
DATABASE = "hpcwaas"
OS_USER = "postgres"


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677), computed client-side."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@register
class Postgres(Service):
    """The PostgreSQL server used by the multi-replica gateway tests."""

    name = "postgres"
    description = "PostgreSQL 15"
    requires = (str(PG_BIN / "postgres"), str(PG_BIN / "initdb"), str(PG_BIN / "pg_ctl"), str(PG_BIN / "psql"))

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "socket"

    @property
    def password_file(self) -> Path:
        return self.dir / f"{ROLE}.password"

    def daemons(self) -> list[Daemon]:
        return [
            Daemon(
                name="postgres",
                exe="postgres",
                pid_file=self.data_dir / "postmaster.pid",
                log_file=self.dir / "postgres.log",
                marker=str(self.data_dir),
                port=PORT,
                # SIGINT is postgres' "fast" shutdown; SIGTERM ("smart") waits for every client.
                stop_signal=signal.SIGINT,
                stop_timeout=30,
            )
        ]

    def _psql(self, sql: str, database: str = "postgres") -> str:
        return run(
            [PG_BIN / "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
             "-p", str(PORT), "-U", OS_USER, "-d", database, "-f", "-"],
            input=sql,
            user=OS_USER,
            what="psql",
        ).stdout.strip()

    def up(self) -> bool:
        ensure_dir(self.dir, 0o755)
        postgres = self.daemons()[0]
        if postgres.pid() is not None and postgres.answers():
            return True
        ensure_dir(self.socket_dir, 0o755, owner=OS_USER)
        if not (self.data_dir / "PG_VERSION").exists():
            ensure_dir(self.data_dir, 0o700, owner=OS_USER)
            run([PG_BIN / "initdb", "-D", self.data_dir, "-U", OS_USER, "--auth-local=peer",
                 "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"],
                user=OS_USER, what="initdb", timeout=120)
            # The settings live in the data dir, so a plain `pg_ctl start` gets them too.
            write_file(
                self.data_dir / "postgresql.auto.conf",
                f"""\
# Written by hpcwaas.stack.
listen_addresses = '{HOST}'
port = {PORT}
unix_socket_directories = '{self.socket_dir}'
password_encryption = 'scram-sha-256'
max_connections = 200
# Faster commits for tests; a crash may lose the last transactions but never corrupts data.
synchronous_commit = off
""",
                0o600,
            )
            pw = pwd.getpwnam(OS_USER)
            os.chown(self.data_dir / "postgresql.auto.conf", pw.pw_uid, pw.pw_gid)
        # postgres refuses to start over a postmaster.pid of a live process, and a stale one
        # (crash, pid reused) is exactly what our identity check detects.
        postgres.clear_stale()
        log = postgres.log_file
        if not log.exists():
            write_file(log, "", 0o640)
            pw = pwd.getpwnam(OS_USER)
            os.chown(log, pw.pw_uid, pw.pw_gid)
        run([PG_BIN / "pg_ctl", "start", "-D", self.data_dir, "-l", log, "-w", "-t", "60"],
            user=OS_USER, what="pg_ctl start", timeout=90,
            hint=f"see {log}")
        postgres.wait_running()
        wait_until(postgres.answers, 30, f"PostgreSQL on {HOST}:{PORT}")
        self._ensure_role_and_database()
        return False

    def _ensure_role_and_database(self) -> None:
        if not self.password_file.exists():
            write_secret(self.password_file, new_password() + "\n")
        verifier = scram_verifier(read_secret(self.password_file))
        # Only constants and our own verifier (base64 and `$:`) are interpolated.
        self._psql(
            f"""\
SELECT 'CREATE ROLE {ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')\\gexec
ALTER ROLE {ROLE} LOGIN CREATEDB PASSWORD '{verifier}';
SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
"""  # noqa: S608
        )

    def describe(self, info: StackInfo) -> None:
        info.postgres = PostgresInfo(
            host=HOST,
            port=PORT,
            user=ROLE,
            database=DATABASE,
            password_file=self.password_file,
            url=f"postgresql+psycopg://{ROLE}@{HOST}:{PORT}/{DATABASE}",
        )
