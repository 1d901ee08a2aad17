"""A one-node Slurm cluster with real job accounting, all private to the stack.

munged (own key and socket; /etc/munge and /run/munge are never touched) -> MariaDB (own
datadir and socket, 127.0.0.1:13306) -> slurmdbd (:16819) -> slurmctld (:16817) -> slurmd
(:16818, ``-N localhost``). Clients, including site users' SSH sessions, find everything through
``SLURM_CONF=<stack_dir>/slurm/slurm.conf``.

Nothing is wiped by ``up``: the slurmctld state (and so the job id counter) and the accounting
database survive restarts. If the controller state is lost while the database is kept, the
next job id is taken from the database, so ``sacct -j N`` never mixes two jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
from pathlib import Path

from hpcwaas.stack.base import Service, register
from hpcwaas.stack.info import StackInfo
from hpcwaas.stack.process import (
    Daemon,
    StackError,
    descendants,
    ensure_dir,
    new_password,
    process_exe,
    read_secret,
    run,
    terminate,
    wait_until,
    write_file,
    write_secret,
)
from hpcwaas.stack.site_users import SITE_USERS

PARTITIONS = ("debug", "batch")  # the first one is the default
CTLD_PORT = 16817
SLURMD_PORT = 16818
DBD_PORT = 16819
MARIADB_PORT = 13306
NODE_CPUS = 16  # more than the 2 real cores on purpose (with config_overrides): many small jobs at once
ACCOUNT = "hpcwaas"
DB_NAME = "slurm_acct_db"
DB_USER = "slurm"


def _mysql_native_hash(password: str) -> str:
    """MariaDB's mysql_native_password hash, so the clear password never reaches the server."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()  # noqa: S324


@register
class Slurm(Service):
    """munged + MariaDB + slurmdbd + slurmctld + slurmd on one node."""

    name = "slurm"
    description = "Slurm (one node) with slurmdbd accounting"
    cluster_name = "hpcwaas"
    requires = ("munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd",
                "sacctmgr", "scontrol", "sinfo")

    # ---- layout -----------------------------------------------------------------------------

    @property
    def slurm_conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def dbd_conf(self) -> Path:
        # slurmdbd has no -f: it reads slurmdbd.conf from the directory of $SLURM_CONF.
        return self.dir / "slurmdbd.conf"

    @property
    def munge_dir(self) -> Path:
        return self.dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def db_dir(self) -> Path:
        return self.dir / "mariadb"

    @property
    def my_cnf(self) -> Path:
        return self.db_dir / "my.cnf"

    @property
    def db_socket(self) -> Path:
        return self.db_dir / "mariadbd.sock"

    @property
    def db_password_file(self) -> Path:
        return self.db_dir / "slurm-user.password"

    @property
    def state_dir(self) -> Path:
        return self.dir / "ctld-state"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    def env(self) -> dict[str, str]:
        """Environment for Slurm commands and daemons."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    # ---- daemons ----------------------------------------------------------------------------

    def _munged(self) -> Daemon:
        return Daemon("munged", "munged", self.munge_dir / "munged.pid", self.log_dir / "munged.log",
                      socket=self.munge_socket)

    def _mariadbd(self) -> Daemon:
        return Daemon("mariadbd", "mariadbd", self.db_dir / "mariadbd.pid", self.log_dir / "mariadbd.log",
                      marker=str(self.my_cnf), port=MARIADB_PORT, stop_timeout=30)

    def _slurmdbd(self) -> Daemon:
        return Daemon("slurmdbd", "slurmdbd", self.dir / "slurmdbd.pid", self.log_dir / "slurmdbd.log",
                      port=DBD_PORT)

    def _slurmctld(self) -> Daemon:
        return Daemon("slurmctld", "slurmctld", self.dir / "slurmctld.pid", self.log_dir / "slurmctld.log",
                      port=CTLD_PORT)

    def _slurmd(self) -> Daemon:
        return Daemon("slurmd", "slurmd", self.dir / "slurmd.pid", self.log_dir / "slurmd.log",
                      port=SLURMD_PORT)

    def daemons(self) -> list[Daemon]:
        return [self._munged(), self._mariadbd(), self._slurmdbd(), self._slurmctld(), self._slurmd()]

    # ---- configuration ----------------------------------------------------------------------

    def _first_job_id(self) -> int | None:
        """The next job id from the accounting DB when the controller state is gone, else None."""
        if (self.state_dir / "job_state").exists():
            return None
        table = f"{self.cluster_name}_job_table"
        out = run(
            ["mariadb", f"--defaults-file={self.my_cnf}", "--batch", "--skip-column-names"],
            input=f"SELECT COALESCE(MAX(id_job), 0) FROM {DB_NAME}.{table};\n",  # noqa: S608 - constants
            check=False,
        )
        # No database or table yet (first start): nothing to continue from.
        if out.returncode != 0 or not out.stdout.strip().isdigit():
            return None
        last = int(out.stdout.strip())
        return last + 1 if last else None

    def render_slurm_conf(self, first_job_id: int | None) -> bool:
        """Write slurm.conf; True if its content changed."""
        text = self._slurm_conf_text(first_job_id)
        old = self.slurm_conf.read_text() if self.slurm_conf.exists() else None
        if old != text:
            write_file(self.slurm_conf, text, 0o644)
        return old != text

    def conf_is_current(self) -> bool:
        """Whether the running daemons' slurm.conf matches what this code would write (the
        FirstJobId line aside, which only matters at a cold start)."""
        if not self.slurm_conf.exists():
            return False

        def settings(text: str) -> list[str]:
            return [line for line in text.splitlines() if "FirstJobId" not in line]

        return settings(self.slurm_conf.read_text()) == settings(self._slurm_conf_text(None))

    def _slurm_conf_text(self, first_job_id: int | None) -> str:
        partitions = "\n".join(
            f"PartitionName={p} Nodes=localhost {'Default=YES ' if i == 0 else ''}MaxTime=INFINITE State=UP"
            for i, p in enumerate(PARTITIONS)
        )
        text = f"""\
# Written by hpcwaas.stack; edits are overwritten on `up`.
ClusterName={self.cluster_name}
SlurmctldHost=localhost
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.dir / "slurmd-spool"}
SlurmctldPidFile={self.dir / "slurmctld.pid"}
SlurmdPidFile={self.dir / "slurmd.pid"}
SlurmctldLogFile={self.log_dir / "slurmctld.log"}
SlurmdLogFile={self.log_dir / "slurmd.log"}
# No usable cgroups here (v1 hybrid, no systemd).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Schedule batch jobs at once instead of every few seconds.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,default_queue_depth=200
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={DBD_PORT}
# With a private munge socket, the accounting connection needs it named here.
AccountingStoragePass={self.munge_socket}
# Keep --comment in accounting: resumed runs find their jobs by tag after they leave the queue.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
{f"FirstJobId={first_job_id}" if first_job_id else "# FirstJobId: continued from the controller state"}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=8000 State=UNKNOWN
{partitions}
"""
        return text

    def render_dbd_conf(self) -> None:
        write_secret(
            self.dbd_conf,
            f"""\
# Written by hpcwaas.stack; holds the database password, hence mode 600.
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={DBD_PORT}
SlurmUser=root
PidFile={self.dir / "slurmdbd.pid"}
LogFile={self.log_dir / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={MARIADB_PORT}
StorageUser={DB_USER}
StoragePass={read_secret(self.db_password_file)}
StorageLoc={DB_NAME}
""",
        )

    def render_my_cnf(self) -> None:
        write_file(
            self.my_cnf,
            f"""\
# Written by hpcwaas.stack. Only this file is read (--defaults-file), never /etc/mysql.
[client]
socket = {self.db_socket}
user = root

[mysqld]
user = root
datadir = {self.db_dir / "data"}
socket = {self.db_socket}
pid-file = {self.db_dir / "mariadbd.pid"}
log-error = {self.log_dir / "mariadbd.log"}
bind-address = 127.0.0.1
port = {MARIADB_PORT}
skip-name-resolve
innodb_buffer_pool_size = 128M
innodb_log_file_size = 64M
innodb_lock_wait_timeout = 900
""",
            0o600,
        )

    # ---- lifecycle --------------------------------------------------------------------------

    def healthy(self) -> bool:
        return super().healthy() and self.munge_socket.exists()

    def up(self) -> bool:
        if self.healthy() and self.conf_is_current():
            return True
        if self.healthy():
            # An upgrade changed the configuration: restart the controller and the node with it.
            self._slurmctld().stop()
            self._slurmd().stop()
        ensure_dir(self.dir, 0o755)
        ensure_dir(self.log_dir, 0o755)
        # Site users need to reach the munge socket; the key inside stays 0600.
        ensure_dir(self.munge_dir, 0o755)
        ensure_dir(self.db_dir, 0o700)
        ensure_dir(self.state_dir, 0o700)
        ensure_dir(self.dir / "slurmd-spool", 0o755)
        self._start_munged()
        self._start_mariadb()
        self._start_slurmdbd()
        self._ensure_associations()
        self._start_controller_and_node()
        return False

    def _start_munged(self) -> None:
        munged = self._munged()
        if munged.pid() is not None and self.munge_socket.exists():
            return
        if not self.munge_key.exists():
            write_secret(self.munge_key, os.urandom(1024).hex())
        munged.stop()
        self.munge_socket.unlink(missing_ok=True)
        munged.spawn(
            ["munged", f"--socket={self.munge_socket}", f"--key-file={self.munge_key}",
             f"--pid-file={munged.pid_file}", f"--log-file={munged.log_file}",
             f"--seed-file={self.munge_dir / 'munged.seed'}"],
            foreground=False,
        )
        munged.wait_running()
        wait_until(self.munge_socket.exists, 10, "the munge socket")

    def _start_mariadb(self) -> None:
        mariadbd = self._mariadbd()
        if mariadbd.pid() is not None and mariadbd.answers():
            return
        self.render_my_cnf()
        data = self.db_dir / "data"
        if not (data / "mysql").is_dir():
            run(["mariadb-install-db", f"--defaults-file={self.my_cnf}", "--auth-root-authentication-method=socket",
                 "--skip-test-db"], what="mariadb-install-db", timeout=120)
        mariadbd.spawn(["mariadbd", f"--defaults-file={self.my_cnf}"], cwd=self.db_dir)
        mariadbd.wait_running()
        wait_until(lambda: mariadbd.answers() and self.db_socket.exists(), 30, "MariaDB on :13306")
        if not self.db_password_file.exists():
            write_secret(self.db_password_file, new_password() + "\n")
        # SQL on stdin and a pre-hashed password: the secret is neither in argv nor in any log.
        pw_hash = _mysql_native_hash(read_secret(self.db_password_file))
        run(
            ["mariadb", f"--defaults-file={self.my_cnf}"],
            input=(
                f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY PASSWORD '{pw_hash}';\n"
                f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY PASSWORD '{pw_hash}';\n"
                f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';\n"
            ),
            what="MariaDB user setup for slurmdbd",
        )

    def _start_slurmdbd(self) -> None:
        dbd = self._slurmdbd()
        if dbd.pid() is not None and dbd.answers():
            return
        self.render_dbd_conf()
        # slurmdbd reads slurm.conf too (for the cluster): make sure one exists.
        if not self.slurm_conf.exists():
            self.render_slurm_conf(None)
        dbd.spawn(["slurmdbd"], env=self.env(), foreground=False)
        dbd.wait_running()
        wait_until(dbd.answers, 60, "slurmdbd on :16819")

    def _sacctmgr(self, *args: str, check: bool = True) -> str:
        return run(["sacctmgr", "-i", "-n", "-P", *args], env=self.env(), check=check,
                   what=f"sacctmgr {' '.join(args[:2])}").stdout

    def _ensure_associations(self) -> None:
        """Cluster, account and the site users in the accounting DB (what sacct reports on)."""
        if self.cluster_name not in self._sacctmgr("show", "cluster", "format=cluster").split():
            self._sacctmgr("add", "cluster", self.cluster_name)
        if ACCOUNT not in self._sacctmgr("show", "account", "format=account").split():
            self._sacctmgr("add", "account", ACCOUNT, f"Cluster={self.cluster_name}",
                           "Description=hpcwaas site users", "Organization=hpcwaas")
        users = set(self._sacctmgr("show", "user", "format=user").split())
        missing = [u for u in SITE_USERS if u not in users]
        if missing:
            self._sacctmgr("add", "user", ",".join(missing), f"Account={ACCOUNT}",
                           f"Cluster={self.cluster_name}")

    def _start_controller_and_node(self) -> None:
        ctld, slurmd = self._slurmctld(), self._slurmd()
        if ctld.pid() is None:
            changed = self.render_slurm_conf(self._first_job_id())
            if changed and slurmd.pid() is not None:
                slurmd.stop()  # the node must read the same configuration as the controller
            ctld.spawn(["slurmctld", "-f", self.slurm_conf], env=self.env(), foreground=False)
            ctld.wait_running()
        wait_until(ctld.answers, 30, "slurmctld on :16817")
        if slurmd.pid() is None:
            slurmd.spawn(["slurmd", "-f", self.slurm_conf, "-N", "localhost"], env=self.env(), foreground=False)
            slurmd.wait_running()
        try:
            wait_until(self._node_ready, 30, "the Slurm node to become idle", interval=0.2)
        except StackError as exc:
            raise StackError(
                f"{exc.message}; see {self.log_dir}/slurmctld.log and slurmd.log",
                hint="`python -m hpcwaas.stack down --only slurm` then `up` again",
            ) from exc

    def down(self) -> list[str]:
        """Cancel running jobs (recorded as CANCELLED), stop the daemons, then any job step left.

        slurmstepd and the job's processes outlive slurmd by design; ``down`` stops them too.
        """
        if self._slurmctld().pid() is not None:
            running = run(["squeue", "-h", "-t", "RUNNING,COMPLETING,CONFIGURING", "-o", "%i"],
                          env=self.env(), check=False).stdout.split()
            if running:
                run(["scancel", *running], env=self.env(), check=False)
                with contextlib.suppress(StackError):
                    wait_until(lambda: not run(["squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", "%i"],
                                               env=self.env(), check=False).stdout.split(),
                               10, "cancelled jobs to end", interval=0.2)
        stopped = super().down()
        for pid in self._job_steps():
            # The job's processes first: the step daemon then finishes by itself.
            for child in reversed(descendants(pid)):
                terminate(child, signal.SIGKILL, 2, f"job process {child}")
            terminate(pid, signal.SIGTERM, 5, f"slurmstepd {pid}")
            if "slurmstepd" not in stopped:
                stopped.append("slurmstepd")
        return stopped

    def _job_steps(self) -> list[int]:
        """slurmstepd processes of *this* cluster: slurmd handed them our SLURM_CONF."""
        marker = f"SLURM_CONF={self.slurm_conf}".encode()
        names = {"slurmstepd", "slurmstepd-wlm"}  # Debian runs it through alternatives
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and process_exe(int(entry.name)) in names:
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def _node_ready(self) -> bool:
        out = run(["sinfo", "-h", "-N", "-n", "localhost", "-o", "%t"], env=self.env(), check=False).stdout
        states = set(out.split())
        return bool(states) and all(re.fullmatch(r"(idle|mix|alloc|comp)", s) for s in states)

    def describe(self, info: StackInfo) -> None:
        # Slurm is described as part of the site (see sshd.py); nothing of its own to add.
        return None
