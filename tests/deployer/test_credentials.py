"""One resolver for every credential use: a run acting for one user never reaches another user's
key, whichever executor asks (Ansible, the batch job, the pipelines), and nothing connects first.
On the real site: its sshd log shows no login with the victim's key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer import api
from deployer.credentials import CredentialResolver, StaticCredentialProvider, VaultCredentialProvider
from deployer.errors import CredentialError, DeployerError, OperationError
from hpcwaas.ssh import generate_keypair
from hpcwaas.stack.info import SiteInfo, StackInfo, VaultInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from hpcwaas.vault import Vault

pytestmark = [pytest.mark.site, pytest.mark.vault]
TWO_ACCOUNTS = Path(__file__).resolve().parents[1] / "gateway" / "engine" / "fixtures" / "two-accounts"


class Recording(StaticCredentialProvider):
    """Remembers every key it was asked for: the resolver must refuse before asking."""

    def __init__(self, keys: dict[str, str]) -> None:
        super().__init__(keys)
        self.asked: list[str] = []

    def private_key(self, credential_ref: str) -> str:
        self.asked.append(credential_ref)
        return super().private_key(credential_ref)


def test_the_resolver_refuses_another_users_key_before_reading_it() -> None:
    source = Recording({"alice/k1": "alice's key", "dave/k2": "dave's key"})
    dave = CredentialResolver(source, "dave")
    assert dave.private_key("dave/k2") == "dave's key"
    for ref in ("alice/k1", "vault:alice/k1", "alice/k2"):
        with pytest.raises(CredentialError, match="does not belong to the user this run acts for"):
            dave.private_key(ref)
        with pytest.raises(CredentialError):
            dave.credential(ref, "sciuser1")
    issued: list[str] = []
    with_certificates = CredentialResolver(source, "dave", certificates=lambda login: issued.append(login) or None)
    with pytest.raises(CredentialError):
        with_certificates.credential("alice/k1", "sciuser1")
    assert source.asked == ["dave/k2"] and issued == []
    with pytest.raises(CredentialError):
        CredentialResolver(source, "")


@pytest.fixture(scope="module")
def accounts(site: SiteInfo, vault_info: VaultInfo) -> Iterator[dict[str, Any]]:
    """A victim's key (sciuser1) and an attacker's (sciuser2) in Vault, both authorised on the site."""
    vault = Vault(vault_info.addr, vault_info.gateway_token(), mount=vault_info.mount)
    made = {}
    for role, login in (("victim", "sciuser1"), ("attacker", "sciuser2")):
        user, key = f"{role}-{uuid.uuid4().hex[:8]}", "k1"
        pair = generate_keypair()
        vault.put_ssh_key(user, key, pair.private_key)
        authorize_key(login, pair.public.line)
        made[role] = {"user": user, "ref": f"{user}/{key}", "login": login, "pair": pair}
    yield {**made, "provider": VaultCredentialProvider(vault)}
    for entry in made.values():
        revoke_key(entry["login"], entry["pair"].public.line)
        vault.delete_ssh_key(entry["user"], "k1")


def _inputs(site: SiteInfo, credential: str, run_credential: str, login: str, run_login: str) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    work = f"/home/{login}/hpcwaas/xuser-{tag}"
    return {"login_host": site.host, "port": site.port, "host_key": site.host_key, "username": login,
            "credential": credential, "work_dir": work, "software_dir": f"{work}/software",
            "run_username": run_login, "run_credential": run_credential,
            "run_work_dir": f"/home/{run_login}/hpcwaas/xuser-{tag}/run"}


def _victim_logins(stack: StackInfo, accounts: dict[str, Any], since: int) -> list[str]:
    log = (stack.stack_dir / "sshd" / "sshd.log").read_bytes()[since:].decode(errors="replace")
    fingerprint = accounts["victim"]["pair"].public.fingerprint
    return [line for line in log.splitlines() if fingerprint in line]


def test_no_executor_logs_in_with_another_users_key(site: SiteInfo, stack: StackInfo, accounts: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """The attacker names the victim's key for the Ansible host (deploy) and for the batch job's
    host (a run): both refused before any connection."""
    sshd_log = stack.stack_dir / "sshd" / "sshd.log"
    since = sshd_log.stat().st_size
    attacker, victim = accounts["attacker"], accounts["victim"]
    as_attacker = CredentialResolver(accounts["provider"], attacker["user"])

    # Ansible (deploy): the developer's HPCSite carries the victim's key.
    with pytest.raises(DeployerError, match=r"site: .*does not belong to the user this run acts for"):
        api.deploy(TWO_ACCOUNTS, tmp_path / "a", credentials=as_attacker,
                   inputs=_inputs(site, victim["ref"], attacker["ref"], victim["login"], attacker["login"]))

    # The batch job (a run): deployed with the attacker's own key, run on the victim's.
    state = tmp_path / "b"
    own = _inputs(site, attacker["ref"], attacker["ref"], attacker["login"], attacker["login"])
    api.deploy(TWO_ACCOUNTS, state, credentials=as_attacker, inputs=own)
    stolen = {**own, "run_credential": victim["ref"], "run_username": victim["login"]}
    with pytest.raises(OperationError, match=r"job: .*does not belong to the user this run acts for"):
        api.run_workflow(state, "execute", credentials=as_attacker, inputs=stolen, workflow_inputs={})
    assert _victim_logins(stack, accounts, since) == []
