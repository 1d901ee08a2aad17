"""The site's login node: OpenSSH sshd on 127.0.0.1:12222 with its own, kept host key."""

from __future__ import annotations

from pathlib import Path

from hpcwaas.stack.base import Service, register
from hpcwaas.stack.info import SiteInfo, SiteUser, StackInfo
from hpcwaas.stack.openbao import trusted_user_ca_keys
from hpcwaas.stack.process import Daemon, StackError, ensure_dir, run, wait_until, write_file
from hpcwaas.stack.site_users import SITE_USERS, check_accounts
from hpcwaas.stack.slurm import PARTITIONS, Slurm

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
PORT = 12222


@register
class Sshd(Service):
    """sshd as root (real per-user logins), key-only, limited to the site users."""

    name = "sshd"
    description = "OpenSSH login node"
    requires = (SSHD, "ssh-keygen")

    @property
    def config_file(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def daemons(self) -> list[Daemon]:
        return [
            Daemon(
                name="sshd",
                exe="sshd",
                pid_file=self.dir / "sshd.pid",
                log_file=self.dir / "sshd.log",
                # sshd rewrites its title but keeps the original arguments in it.
                marker=str(self.config_file),
                port=PORT,
                # Open sessions outlive the listener otherwise; `down` means nothing of ours is left.
                stop_children=True,
            )
        ]

    def render_config(self) -> bool:
        """Write the config; True when it changed."""
        slurm_conf = Slurm(self.stack_dir).slurm_conf
        before = self.config_file.read_text() if self.config_file.exists() else None
        text = f"""\
# Written by hpcwaas.stack; edits are overwritten on `up`.
ListenAddress {HOST}:{PORT}
HostKey {self.host_key}
PidFile {self.dir / "sshd.pid"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
UsePAM no
AllowUsers {" ".join(SITE_USERS)}
AuthorizedKeysFile .ssh/authorized_keys
# Per-run certificates from the stack's OpenBao SSH CAs (principal = the site user); the key id,
# logged at each login, names the gateway's execution or deployment.
TrustedUserCAKeys {trusted_user_ca_keys(self.stack_dir)}
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
LogLevel INFO
Subsystem sftp internal-sftp
# Every session finds the stack's Slurm (and its private munge socket) through this.
SetEnv SLURM_CONF={slurm_conf}
"""
        write_file(self.config_file, text, 0o644)
        return text != before

    def up(self) -> bool:
        ensure_dir(self.dir, 0o755)
        check_accounts()
        sshd = self.daemons()[0]
        running = sshd.pid() is not None and sshd.answers()
        if running and not (self.host_key.exists() and self.render_config()):
            return True
        if running:
            sshd.stop()  # its config changed (a newer checkout): start it again with the new one
        if not self.host_key.exists():
            # Generated once and kept: sites pin it, so it must survive restarts.
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpcwaas-stack-site",
                 "-f", self.host_key], what="ssh-keygen (host key)")
        self.render_config()
        ensure_dir(Path("/run/sshd"), 0o755)  # privilege separation dir, required when run as root
        run([SSHD, "-t", "-f", self.config_file], what="sshd -t (config check)")
        # Absolute path: sshd re-executes itself and refuses a relative argv[0].
        sshd.spawn([SSHD, "-f", self.config_file, "-E", sshd.log_file], foreground=False)
        sshd.wait_running()
        wait_until(sshd.answers, 10, f"sshd on {HOST}:{PORT}")
        return False

    def host_public_key(self) -> str:
        """`ssh-ed25519 AAAA...` without the comment."""
        pub = self.host_key.with_suffix(".pub")
        if not pub.exists():
            raise StackError(f"{pub} is missing; run `python -m hpcwaas.stack up --only sshd`")
        return " ".join(pub.read_text().split()[:2])

    def describe(self, info: StackInfo) -> None:
        users = [SiteUser(name=a.name, home=a.home, work_dir=a.home) for a in check_accounts()]
        info.site = SiteInfo(
            host=HOST,
            port=PORT,
            host_key=self.host_public_key(),
            users=users,
            slurm_conf=Slurm(self.stack_dir).slurm_conf,
            partitions=list(PARTITIONS),
            default_partition=PARTITIONS[0],
            accounting="slurmdbd",
            cluster_name=Slurm.cluster_name,
        )
