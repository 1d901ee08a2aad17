"""SSH credentials: Vault-only private keys, ownership on every use, checks on the real site."""

from __future__ import annotations

import hvac
import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from hpcwaas.settings import Settings
from hpcwaas.ssh import generate_keypair
from hpcwaas.stack.info import SiteInfo, VaultInfo
from hpcwaas.stack.site_users import authorize_key
from hpcwaas.vault import Vault
from tests.fixtures.gateway import Person, error_of, registered_site


def _root_vault(vault_info: VaultInfo) -> hvac.Client:
    return hvac.Client(url=vault_info.addr, token=vault_info.root_token())


def _vault_secret(vault_info: VaultInfo, user_id: str, key_id: str) -> dict[str, str]:
    resp = _root_vault(vault_info).secrets.kv.v2.read_secret_version(
        path=Vault.ssh_key_path(user_id, key_id), mount_point=vault_info.mount, raise_on_deleted_version=True
    )
    data: dict[str, str] = resp["data"]["data"]
    return data


def test_generate_returns_public_half_only_and_vault_has_the_private(
    people: dict[str, Person], vault_info: VaultInfo, unique: str
) -> None:
    alice = people["alice"]
    resp = alice.post("/ssh_keys", json={"name": f"k-{unique}", "login": "sciuser1"})
    assert resp.status_code == 201, resp.text
    key = resp.json()
    assert key["public_key"].startswith("ssh-ed25519 ") and key["fingerprint"].startswith("SHA256:")
    assert "PRIVATE" not in resp.text
    secret = _vault_secret(vault_info, alice.id, key["id"])
    assert secret["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert [k["id"] for k in alice.get("/ssh_keys").json()].count(key["id"]) == 1


def test_rsa_on_request(people: dict[str, Person]) -> None:
    resp = people["alice"].post("/ssh_keys", json={"type": "rsa", "bits": 4096})
    assert resp.status_code == 201 and resp.json()["key_type"] == "ssh-rsa"


def test_import_existing_key_with_passphrase(people: dict[str, Person], vault_info: VaultInfo, unique: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"correct horse"),
    ).decode()
    bob = people["bob"]
    wrong = bob.post("/ssh_keys/import", json={"private_key": pem, "passphrase": "nope", "name": f"i-{unique}"})
    assert wrong.status_code == 422 and "passphrase" in error_of(wrong)["message"]
    resp = bob.post("/ssh_keys/import", json={"private_key": pem, "passphrase": "correct horse", "name": f"i-{unique}"})
    assert resp.status_code == 201, resp.text
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert resp.json()["public_key"] == public.decode()
    assert resp.json()["origin"] == "imported"


def test_malformed_private_key_is_422_and_nothing_is_kept(people: dict[str, Person], unique: str) -> None:
    bob = people["bob"]
    before = len(bob.get("/ssh_keys").json())
    for bad in ("not a key", "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----"):
        resp = bob.post("/ssh_keys/import", json={"private_key": bad, "name": f"bad-{unique}"})
        assert resp.status_code == 422
        err = error_of(resp)
        assert err["code"] == "invalid_key" and err["details"]["field"] == "private_key"
        assert bad not in resp.text
    assert len(bob.get("/ssh_keys").json()) == before


def test_another_user_cannot_read_use_check_or_delete_a_key(people: dict[str, Person], site: SiteInfo) -> None:
    registered_site(people["admin"], site)
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    bob = people["bob"]
    assert bob.get(f"/ssh_keys/{key['id']}").status_code == 404
    assert key["id"] not in [k["id"] for k in bob.get("/ssh_keys").json()]
    assert bob.post(f"/ssh_keys/{key['id']}/check", json={"site": "local"}).status_code == 404
    assert bob.post("/sites/local/info", json={"ssh_key": key["id"]}).status_code == 404
    job = {"ssh_key": key["id"], "script": "#!/bin/sh\ntrue\n"}
    assert bob.post("/sites/local/jobs", json=job).status_code == 404
    assert bob.delete(f"/ssh_keys/{key['id']}").status_code == 404
    assert people["alice"].get(f"/ssh_keys/{key['id']}").status_code == 200


@pytest.mark.site
def test_check_logs_in_with_the_vault_key(people: dict[str, Person], site: SiteInfo) -> None:
    registered_site(people["admin"], site)
    alice = people["alice"]
    key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    not_installed = alice.post(f"/ssh_keys/{key['id']}/check", json={"site": "local"})
    assert not_installed.status_code == 422
    assert "authorized_keys" in error_of(not_installed)["hint"]
    authorize_key("sciuser1", key["public_key"])
    resp = alice.post(f"/ssh_keys/{key['id']}/check", json={"site": "local"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["remote_user"] == "sciuser1" and "22.05" in body["scheduler_version"]
    assert alice.get(f"/ssh_keys/{key['id']}").json()["last_used_at"] is not None


@pytest.mark.site
def test_check_against_unknown_site_unreachable_host_and_changed_host_key(
    people: dict[str, Person], site: SiteInfo, unique: str
) -> None:
    admin, alice = people["admin"], people["alice"]
    key = alice.post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])

    unknown = alice.post(f"/ssh_keys/{key['id']}/check", json={"site": "atlantis"})
    assert unknown.status_code == 404 and "atlantis" in error_of(unknown)["message"]

    admin.post("/sites", json={"name": f"down-{unique}", "login_host": "127.0.0.1", "port": 1,
                               "host_key": site.host_key})
    down = alice.post(f"/ssh_keys/{key['id']}/check", json={"site": f"down-{unique}"})
    assert down.status_code == 503 and error_of(down)["code"] == "site_unreachable"

    impostor = generate_keypair().public.line  # the site now "presents" a key other than the pinned one
    admin.post("/sites", json={"name": f"mitm-{unique}", "login_host": site.host, "port": site.port,
                               "host_key": impostor})
    mitm = alice.post(f"/ssh_keys/{key['id']}/check", json={"site": f"mitm-{unique}"})
    assert mitm.status_code == 409
    err = error_of(mitm)
    assert err["code"] == "host_key_mismatch" and "refused" in err["message"]


def test_login_is_required_when_the_key_has_none(people: dict[str, Person], site: SiteInfo) -> None:
    registered_site(people["admin"], site)
    key = people["alice"].post("/ssh_keys", json={}).json()
    resp = people["alice"].post(f"/ssh_keys/{key['id']}/check", json={"site": "local"})
    assert resp.status_code == 422 and error_of(resp)["details"]["field"] == "login"


def test_delete_removes_the_vault_secret(people: dict[str, Person], vault_info: VaultInfo) -> None:
    alice = people["alice"]
    key = alice.post("/ssh_keys", json={}).json()
    assert alice.delete(f"/ssh_keys/{key['id']}").status_code == 204
    assert alice.get(f"/ssh_keys/{key['id']}").status_code == 404
    with pytest.raises(hvac.exceptions.InvalidPath):
        _vault_secret(vault_info, alice.id, key["id"])


def test_vault_down_is_503_and_no_record_is_left(settings: Settings, people: dict[str, Person]) -> None:
    broken = settings.model_copy(update={"vault_addr": "http://127.0.0.1:1"})
    alice = people["alice"]
    before = {k["id"] for k in alice.get("/ssh_keys").json()}
    with TestClient(create_app(broken)) as other:
        resp = other.post("/ssh_keys", json={"name": "while-vault-is-down"},
                          headers={"Authorization": f"Bearer {alice.token}"})
    assert resp.status_code == 503
    err = error_of(resp)
    assert err["code"] == "vault_unavailable" and "127.0.0.1:1" in err["message"]
    assert {k["id"] for k in alice.get("/ssh_keys").json()} == before


def test_vault_refusing_the_token_is_503(settings: Settings, people: dict[str, Person]) -> None:
    from pydantic import SecretStr

    broken = settings.model_copy(update={"vault_token": SecretStr("not-a-token"), "vault_token_file": None})
    with TestClient(create_app(broken)) as other:
        resp = other.post("/ssh_keys", json={}, headers={"Authorization": f"Bearer {people['alice'].token}"})
    assert resp.status_code == 503 and "refused the gateway's token" in error_of(resp)["message"]


def test_database_down_is_503(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody:x@127.0.0.1:1/none"}
    )
    with TestClient(create_app(broken)) as other:
        resp = other.get("/users/me", headers={"Authorization": "Bearer hpcw_whatever"})
        health = other.get("/health")
    assert resp.status_code == 503 and error_of(resp)["code"] == "database_unavailable"
    assert health.status_code == 503


def test_an_admin_sees_what_the_readme_says_and_no_more(people: dict[str, Person]) -> None:
    """README: an admin sees any key's metadata (public half, fingerprint, login), never a private
    half, and cannot use it (a key serves its owner's own runs only)."""
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    seen = people["admin"].get(f"/ssh_keys/{key['id']}")
    assert seen.status_code == 200 and seen.json()["fingerprint"] == key["fingerprint"]
    assert not [name for name in seen.json() if "private" in name or "secret" in name], seen.json()
    assert "PRIVATE KEY" not in seen.text
    assert people["bob"].get(f"/ssh_keys/{key['id']}").status_code == 404  # not anyone's business
    check = people["admin"].post(f"/ssh_keys/{key['id']}/check", json={"site": "local"})
    assert check.status_code == 404, check.text  # the admin cannot log in with it
