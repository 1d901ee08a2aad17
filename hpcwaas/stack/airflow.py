"""Apache Airflow 3 for the data-logistics pipelines, in its own virtualenv, on 127.0.0.1:18080.

Airflow pins FastAPI below the gateway's, so it gets a virtualenv of its own under
``<stack_dir>/airflow/venv`` with ``apache-airflow[postgres]==3.3.2``, the SSH/SFTP providers and
hpcwaas itself installed *without* the gateway extra (the core dependencies are Airflow-compatible),
so the DAGs import :mod:`data_logistics` from the working tree. Creating it costs ~40 s once.

Three processes, each in its own process group (LocalExecutor workers are stopped with them):
``api-server`` (REST API v2 and the task Execution API), ``scheduler --skip-serve-logs`` (no log
server on 0.0.0.0:8793) and ``dag-processor``. The metadata database is the stack's PostgreSQL
(role and database ``airflow``). Secrets (the database password, the JWT secret, the Fernet key,
the admin password) live in 0600 files: ``airflow.cfg`` and ``passwords.json`` under the Airflow
home and ``admin.password``; never in argv or in the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx

from hpcwaas.stack.base import ProcessStatus, Service, register
from hpcwaas.stack.info import AirflowInfo, StackInfo
from hpcwaas.stack.postgres import OS_USER, PG_BIN, Postgres, scram_verifier
from hpcwaas.stack.postgres import PORT as PG_PORT
from hpcwaas.stack.process import (
    Daemon,
    StackError,
    ensure_dir,
    new_password,
    read_secret,
    run,
    tail,
    wait_until,
    write_file,
    write_secret,
)

AIRFLOW_VERSION = "3.3.2"
REQUIREMENTS = (
    f"apache-airflow[postgres]=={AIRFLOW_VERSION}",
    "apache-airflow-providers-sftp==7.0.0",
    "apache-airflow-providers-ssh==7.0.1",
)
HOST = "127.0.0.1"
PORT = 18080
ROLE = DATABASE = "airflow"
ADMIN = "admin"
REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "data_logistics" / "dags"
PARALLELISM = 4


class GroupDaemon(Daemon):
    """A daemon stopped with its whole process group (Airflow forks workers and supervisors)."""

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _group_alive(pid), 10, f"{self.name} to die")
        self.pid_file.unlink(missing_ok=True)
        return True


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
        except (OSError, ValueError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


@register
class Airflow(Service):
    """Airflow 3 (api-server, scheduler, dag-processor) with its metadata DB on the stack's PostgreSQL."""

    name = "airflow"
    description = f"Apache Airflow {AIRFLOW_VERSION}"

    @property
    def venv(self) -> Path:
        return self.dir / "venv"

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def storage(self) -> Path:
        return self.dir / "storage"

    @property
    def admin_password_file(self) -> Path:
        return self.dir / "admin.password"

    @property
    def db_password_file(self) -> Path:
        return self.dir / "db.password"

    def _python_exe(self) -> str:
        # /proc/<pid>/exe of a venv python is the interpreter it links to.
        return os.path.basename(os.path.realpath(self.venv / "bin" / "python"))

    def daemons(self) -> list[Daemon]:
        exe = self._python_exe() if (self.venv / "bin" / "python").exists() else "python3"

        def daemon(name: str, marker: str, port: int | None = None) -> Daemon:
            return GroupDaemon(name=name, exe=exe, pid_file=self.dir / f"{name}.pid",
                               log_file=self.dir / f"{name}.log", marker=marker, port=port, stop_timeout=20.0)

        # The api-server renames itself ("airflow api_server -- host:..."), the others keep their argv.
        return [daemon("api-server", "api", PORT), daemon("scheduler", "scheduler"),
                daemon("dag-processor", "dag-processor")]

    # ------------------------------------------------------------------ install

    def _install(self) -> None:
        """Create the virtualenv once (idempotent: a stamp records what was installed)."""
        stamp = self.venv / ".hpcwaas-installed"
        wanted = json.dumps({"requirements": REQUIREMENTS, "repo": str(REPO)})
        if stamp.exists() and stamp.read_text() == wanted and (self.venv / "bin" / "airflow").exists():
            return
        pip = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        if not (self.venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", self.venv], what="python -m venv (Airflow)", timeout=120)
        run([*pip, *REQUIREMENTS], what="pip install apache-airflow", timeout=1200,
            hint="PyPI must be reachable; see the pip output above")
        # Core dependencies only: the gateway extra would pull a FastAPI Airflow refuses.
        run([*pip, "-e", REPO], what="pip install -e hpcwaas (Airflow venv)", timeout=600)
        write_file(stamp, wanted)

    # ------------------------------------------------------------------ database

    def _psql(self, sql: str) -> None:
        socket_dir = self.stack_dir / "postgres" / "socket"
        run([PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", str(PG_PORT),
             "-U", OS_USER, "-d", "postgres", "-f", "-"], input=sql, user=OS_USER, what="psql (Airflow database)")

    def _database(self) -> str:
        """Ensure the role and database; the SQLAlchemy URL (holds the password: config file only)."""
        postgres = Postgres(self.stack_dir)
        pg = postgres.daemons()[0]
        # `up` starts PostgreSQL concurrently: give it time before starting it ourselves.
        with contextlib.suppress(StackError):
            wait_until(lambda: pg.pid() is not None and pg.answers(), 90, "PostgreSQL", interval=0.5)
        if pg.pid() is None or not pg.answers():
            postgres.up()
        if not self.db_password_file.exists():
            write_secret(self.db_password_file, new_password() + "\n")
        password = read_secret(self.db_password_file)
        # Only constants and our own SCRAM verifier are interpolated.
        self._psql(
            f"""\
SELECT 'CREATE ROLE {ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')\\gexec
ALTER ROLE {ROLE} LOGIN PASSWORD '{scram_verifier(password)}';
SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
"""  # noqa: S608
        )
        return f"postgresql+psycopg2://{ROLE}:{password}@127.0.0.1:{PG_PORT}/{DATABASE}"

    # ------------------------------------------------------------------ config

    def _secret(self, name: str, make: str) -> str:
        path = self.dir / name
        if not path.exists():
            write_secret(path, make + "\n")
        return read_secret(path)

    def _configure(self, db_url: str) -> None:
        ensure_dir(self.home, 0o700)
        ensure_dir(self.storage, 0o750)
        admin_password = self._secret("admin.password", new_password())
        write_secret(self.home / "passwords.json", json.dumps({ADMIN: admin_password}) + "\n")
        from cryptography.fernet import Fernet

        fernet = self._secret("fernet.key", Fernet.generate_key().decode())
        jwt = self._secret("jwt.secret", secrets.token_urlsafe(64))
        write_secret(
            self.home / "airflow.cfg",
            f"""\
# Written by hpcwaas.stack.airflow on every `up`; mode 0600 (it holds secrets).
[core]
dags_folder = {DAGS_FOLDER}
load_examples = False
executor = LocalExecutor
parallelism = {PARALLELISM}
max_active_tasks_per_dag = {PARALLELISM}
dags_are_paused_at_creation = False
execution_api_server_url = http://{HOST}:{PORT}/execution/
auth_manager = airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
simple_auth_manager_users = {ADMIN}:admin
simple_auth_manager_passwords_file = {self.home / "passwords.json"}
fernet_key = {fernet}
dagbag_import_timeout = 120

[database]
sql_alchemy_conn = {db_url}

[api]
host = {HOST}
port = {PORT}
workers = 1
expose_config = False

[api_auth]
jwt_secret = {jwt}

[dag_processor]
refresh_interval = 10

[logging]
base_log_folder = {self.home / "logs"}
logging_level = INFO

[scheduler]
enable_health_check = False
""",
        )

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_CONFIG": str(self.home / "airflow.cfg"),
            "PYTHONUNBUFFERED": "1",
            # What the pipeline tasks read through hpcwaas.settings (no secret among them).
            "HPCWAAS_STACK_DIR": str(self.stack_dir),
            "HPCWAAS_PIPELINES_STORAGE_ROOT": str(self.storage),
        }

    def _migrate(self) -> None:
        stamp = self.home / f".migrated-{AIRFLOW_VERSION}"
        if stamp.exists():
            return
        run([self.venv / "bin" / "airflow", "db", "migrate"], env=self._env(), what="airflow db migrate",
            timeout=600, hint=f"see {self.home}")
        write_file(stamp, "")

    # ------------------------------------------------------------------ lifecycle

    def health(self, timeout: float = 3.0) -> dict[str, str]:
        """component -> status from /api/v2/monitor/health ({} when the API does not answer)."""
        try:
            body = httpx.get(f"http://{HOST}:{PORT}/api/v2/monitor/health", timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {name: str((body.get(name) or {}).get("status")) for name in ("metadatabase", "scheduler",
                                                                             "dag_processor")}

    def healthy(self) -> bool:
        return super().healthy() and set(self.health().values()) == {"healthy"}

    def up(self) -> bool:
        ensure_dir(self.dir, 0o755)
        if all(d.pid() is not None for d in self.daemons()) and self.healthy():
            return True
        self._install()
        db_url = self._database()
        self._configure(db_url)
        self._migrate()
        env = self._env()
        airflow = str(self.venv / "bin" / "airflow")
        argv = {
            "api-server": [airflow, "api-server", "-H", HOST, "-p", str(PORT)],
            "scheduler": [airflow, "scheduler", "--skip-serve-logs"],
            "dag-processor": [airflow, "dag-processor"],
        }
        for daemon in self.daemons():
            if daemon.pid() is None:
                daemon.spawn(argv[daemon.name], env=env, cwd=self.home)
        for daemon in self.daemons():
            daemon.wait_running(60)
        try:
            wait_until(lambda: set(self.health().values()) == {"healthy"}, 180, "Airflow to report healthy",
                       interval=1.0)
        except StackError as exc:
            raise StackError(
                f"Airflow did not become healthy ({self.health() or 'API not answering'}). "
                f"api-server log:\n{tail(self.dir / 'api-server.log')}",
                hint=f"see the logs in {self.dir}",
            ) from exc
        return False

    def status(self) -> list[ProcessStatus]:
        health = self.health(timeout=1.0)
        rows = super().status()
        key = {"api-server": "metadatabase", "scheduler": "scheduler", "dag-processor": "dag_processor"}
        out = []
        for row in rows:
            state = row.state
            if state == "running" and health and health.get(key[row.process]) != "healthy":
                state = "unhealthy"
            out.append(ProcessStatus(row.service, row.process, state, row.pid, row.address))
        return out

    def describe(self, info: StackInfo) -> None:
        info.airflow = AirflowInfo(
            url=f"http://{HOST}:{PORT}",
            username=ADMIN,
            password_file=self.admin_password_file,
            home=self.home,
            venv=self.venv,
            dags_folder=DAGS_FOLDER,
            storage_root=self.storage,
            log_dir=self.home / "logs",
            version=AIRFLOW_VERSION,
        )
