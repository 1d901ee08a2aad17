"""Vault access against the stack's real OpenBao."""

from __future__ import annotations

import hvac
import pytest

from hpcwaas.errors import SecretNotFound, VaultError, VaultUnavailable
from hpcwaas.stack.info import VaultInfo
from hpcwaas.vault import Vault, unwrap

pytestmark = pytest.mark.vault


def _gateway_token(info: VaultInfo) -> str:
    root = hvac.Client(url=info.addr, token=info.root_token())
    created = root.auth.token.create(policies=[info.policy], no_default_policy=True, ttl="10m")
    return str(created["auth"]["client_token"])


def test_write_read_delete(vault_info: VaultInfo) -> None:
    vault = Vault(vault_info.addr, vault_info.gateway_token(), vault_info.mount)
    vault.put_ssh_key("u-test", "k-test", "not really a key")
    assert vault.get_ssh_key("u-test", "k-test") == "not really a key"
    vault.delete_ssh_key("u-test", "k-test")
    vault.delete_ssh_key("u-test", "k-test")  # idempotent
    with pytest.raises(SecretNotFound):
        vault.get_ssh_key("u-test", "k-test")


def test_ids_cannot_walk_the_path_tree(vault_info: VaultInfo) -> None:
    vault = Vault(vault_info.addr, vault_info.gateway_token(), vault_info.mount)
    for bad in ("../other", "a/b", "..", ""):
        with pytest.raises(VaultError):
            vault.get_ssh_key(bad, "k")


def test_wrapping_token_is_single_use(vault_info: VaultInfo) -> None:
    vault = Vault(vault_info.addr, vault_info.gateway_token(), vault_info.mount)
    vault.write("tests/wrapped", {"private_key": "secret body"})
    token = vault.wrap("tests/wrapped", ttl="60s")
    assert unwrap(vault_info.addr, token)["private_key"] == "secret body"
    with pytest.raises(VaultError):
        unwrap(vault_info.addr, token)
    vault.delete("tests/wrapped")


def test_rotated_token_file_is_picked_up(vault_info: VaultInfo, tmp_path) -> None:
    first, second = _gateway_token(vault_info), _gateway_token(vault_info)
    token_file = tmp_path / "token"
    token_file.write_text(first)
    vault = Vault(vault_info.addr, first, vault_info.mount, token_file=token_file)
    vault.write("tests/rotation", {"v": "1"})
    hvac.Client(url=vault_info.addr, token=vault_info.root_token()).auth.token.revoke(first)
    token_file.write_text(second)
    assert vault.read("tests/rotation") == {"v": "1"}
    vault.delete("tests/rotation")


def test_unreachable_and_refused(vault_info: VaultInfo) -> None:
    with pytest.raises(VaultUnavailable, match="unreachable"):
        Vault("http://127.0.0.1:1", "x").read("a")
    with pytest.raises(VaultUnavailable, match="refused"):
        Vault(vault_info.addr, "hvs.not-a-token", vault_info.mount).read("a")
