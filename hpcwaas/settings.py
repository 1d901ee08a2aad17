"""The one settings object of hpcwaas (environment prefix ``HPCWAAS_``).

Nothing else in the code base reads ``os.environ``: components take the values they need from
:func:`get_settings` (or from an explicit ``Settings`` instance handed to them in tests).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Machine-wide on purpose: the stack binds fixed loopback ports, so every clone shares one stack.
DEFAULT_STACK_DIR = Path("/var/tmp/hpcwaas-stack")  # noqa: S108


class Settings(BaseSettings):
    """Typed configuration for the gateway, the deployer, the pipelines and the CLI."""

    model_config = SettingsConfigDict(env_prefix="HPCWAAS_", env_file=None, extra="ignore")

    # Where the gateway keeps its own files (SQLite database, deployer state) by default.
    home: Path = Field(default=Path.home() / ".local" / "share" / "hpcwaas")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; SQLite file under `home` when unset."
    )

    vault_addr: str = "http://127.0.0.1:18200"
    vault_token: SecretStr | None = None
    vault_token_file: Path | None = Field(
        default=None, description="File holding the gateway's Vault token (read at start)."
    )
    vault_mount: str = "hpcwaas"
    vault_ssh_mount: str = Field(default="hpcwaas-ssh", description="Vault's SSH secrets engine (the CA that "
                                 "signs per-run certificates for sites that trust it).")
    vault_ssh_role: str = Field(default="runs", description="The SSH engine's role the gateway signs with.")
    ssh_certificate_ttl: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600,
        description="Validity of a per-run SSH certificate (seconds). Each step of a run gets a new one, and a "
        "login needs a valid one only when it is made: a batch job outlives its certificate.")
    vault_timeout: float = 5.0

    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 600.0

    token_ttl_days: int = Field(default=90, ge=1, le=3650)

    public_url: str = Field(default="http://127.0.0.1:18000",
                            description="How pipelines reach the gateway (image downloads by ticket).")
    bind_host: str = "127.0.0.1"
    bind_port: int = 18000
    log_level: str = "INFO"

    # The workflow registry: folders and git repositories may only be read under these roots.
    registry_roots: list[Path] = Field(
        default_factory=lambda: [Path(__file__).resolve().parent.parent / "tosca" / "examples"],
        description="Folders (and git repositories) developers may register workflows from.",
    )
    registry_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest workflow bundle.")
    auth_failures_limit: int = Field(default=20, ge=1, description="Failed authentications a client (or a user) "
                                     "may make in the window before 429 Too Many Requests.")
    auth_failures_window_seconds: float = Field(default=300.0, gt=0)
    max_executions_in_flight: int = Field(default=200, ge=1, description="Executions one user may have not yet "
                                          "ended (pending, running, cancelling); one more is a 429.")
    max_input_bytes: int = Field(default=64 * 1024, ge=1024,
                                 description="Largest inputs of one deployment or execution request (JSON bytes).")

    # The execution engine (threads in the gateway, or `waas worker` processes).
    engine_in_gateway: bool = Field(default=True, description="Run engine workers inside the gateway process.")
    engine_workers: int = Field(default=4, ge=0, le=64, description="Records advanced at once per process.")
    engine_operation_workers: int = Field(default=4, ge=1, le=64, description="Parallel operations per record.")
    engine_lease_seconds: float = Field(default=60.0, ge=5.0, description="A dead worker's records wait this long.")
    engine_transient_window_minutes: float = Field(
        default=30.0, ge=0, description="How long a step waits for a service that is away (the site's SSH "
        "server, Slurm's controller, Vault, Airflow) before it fails; 0 fails at once.")
    run_retention_days: float = Field(
        default=14.0, ge=0, description="An ended execution's folder on the site is removed this long after it "
        "ended (its results were staged out; a failed one can no longer be resumed); 0 keeps them.")
    engine_poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for work.")

    # The standalone deployer (`hpcwaas-deploy`): the gateway always sandboxes developer code.
    deployer_sandbox: bool = Field(
        default=True, description="Run playbooks in the bubblewrap sandbox (deployer/sandbox.py). Turn it off "
        "only for your own templates when local operations must change this machine.")

    # The local stack (development, tests, demo).
    stack_dir: Path = DEFAULT_STACK_DIR

    # Container images (containers/): the store, and the Apptainer builder tree the stack prepares.
    images_dir: Path | None = Field(default=None, description="Image store; `home`/images when unset.")
    builder_dir: Path | None = Field(default=None, description="Builder tree; `stack_dir`/apptainer when unset.")
    image_mirror: str = Field(default="http://deb.debian.org/debian", pattern=r"^https?://[A-Za-z0-9.:/_-]+$")
    image_build_timeout: float = Field(default=3600.0, gt=0)
    image_build_workers: int = Field(default=1, ge=1, le=16)
    image_build_lease_seconds: float = Field(default=60.0, ge=5)

    # Data logistics: the Airflow API server, and what the pipelines' tasks use.
    airflow_url: str = "http://127.0.0.1:18080"
    airflow_username: str = "admin"
    airflow_password_file: Path | None = Field(
        default=None, description="File holding the Airflow user's password (the stack writes one)."
    )
    airflow_retry_seconds: float = Field(
        default=7.5, ge=0, le=120,
        description="How long one call to Airflow keeps retrying a moment's fault (pauses double from 0.5 s).",
    )
    pipelines_storage_root: Path = Field(
        default=DEFAULT_STACK_DIR / "airflow" / "storage",
        description="Local storage target of the pipelines (file: URLs); paths stay inside it.",
    )
    pipelines_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (names) or address ranges (CIDR) that stage-in may fetch from although they are "
        "internal; by default only public addresses are fetched, and never the gateway, Vault or Airflow.")
    pipelines_wrap_ttl: str = Field(default="900s", pattern=r"^[1-9][0-9]{0,5}[smh]$",
                                    description="Lifetime of the single-use Vault token a run gets.")
    pipelines_sync_interval_minutes: int = Field(
        default=60, ge=1, le=7 * 24 * 60,
        description="How often the gateway's engine syncs each catalogue mirror (an operator's setting).",
    )
    pipelines_sync_schedule: str | None = Field(
        default=None, description="The sync DAG's own schedule for the mirrors of HPCWAAS_PIPELINES_SYNC_FILE.")
    pipelines_sync_file: Path | None = Field(default=None, description="JSON list of the mirrors sync maintains.")
    pipelines_sync_vault_token_file: Path | None = Field(
        default=None, description="Vault token (policy: read the mirrors' keys only) for scheduled syncs."
    )

    # The CLI: where the gateway is and which token to use (overrides the CLI's config file).
    url: str | None = None
    token: SecretStr | None = None
    cli_config: Path = Field(default=Path.home() / ".config" / "hpcwaas" / "cli.json")

    @field_validator("vault_mount")
    @classmethod
    def _mount_is_a_plain_name(cls, value: str) -> str:
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError("vault_mount must be a plain mount name (letters, digits, - and _)")
        return value

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'hpcwaas.db'}"

    @property
    def effective_images_dir(self) -> Path:
        """The image store, defaulting to ``home``/images."""
        return self.images_dir or self.home / "images"

    @property
    def effective_builder_dir(self) -> Path:
        """The Apptainer builder tree's folder, defaulting to the stack's."""
        return self.builder_dir or self.stack_dir / "apptainer"

    def vault_token_value(self) -> str | None:
        """The gateway's Vault token, from the setting or the token file."""
        if self.vault_token is not None:
            return self.vault_token.get_secret_value()
        if self.vault_token_file is not None and self.vault_token_file.exists():
            return self.vault_token_file.read_text().strip() or None
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
