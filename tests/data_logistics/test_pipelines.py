"""Each pipeline's task function against the real sshd and OpenBao (what the DAG's one task runs).

Running the task function directly costs milliseconds; the same code runs inside Airflow in
test_gateway_pipelines.py. Every run here gets real single-use wrapping tokens from OpenBao.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hvac
import pytest

from data_logistics import pipelines, transfer
from data_logistics.credentials import burn
from data_logistics.errors import CredentialUnavailable, DatasetUnresolved, InvalidTransfer, PathOutsideWorkDir
from data_logistics.sync import run_scheduled
from data_logistics.urls import UrlPolicy
from hpcwaas.settings import Settings
from hpcwaas.ssh import SSHSession
from hpcwaas.stack.info import SiteInfo, VaultInfo
from hpcwaas.vault import Vault
from tests.data_logistics.conftest import TEST_USER, SiteKey, make_file, make_tree, site_ref

pytestmark = [pytest.mark.site, pytest.mark.vault]
MiB = 1024 * 1024


def _ref(site: SiteInfo, vault: Vault, key: SiteKey, login: str, work_dir: str) -> dict[str, Any]:
    return site_ref(site, vault, key, login, work_dir).model_dump()


def _token_is_spent(vault: Vault, token: str) -> bool:
    return not burn(vault.addr, token)


def test_stage_in_from_local_storage_http_and_site(tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey,
                                                   session: SSHSession, work_dir: str,
                                                   http_root: tuple[Path, str]) -> None:
    storage = tmp_path / "storage"
    digest = make_file(storage / "in" / "data.bin", 3 * MiB)
    ref = _ref(site, vault, site_key, "sciuser1", work_dir)
    conf = {"requested_by": "u1", "source": {"kind": "local", "path": "in/data.bin"},
            "target": {"kind": "site", "site": ref, "path": "inputs/data.bin"}}
    seen: list[transfer.Progress] = []
    result = pipelines.execute("stage_in", conf, storage_root=storage, progress=seen.append)
    assert result["sha256"] == digest and result["target"]["path"] == f"{work_dir}/inputs/data.bin"
    assert result["target"]["site"] == "local" and "wrap_token" not in json.dumps(result)
    assert _token_is_spent(vault, ref["wrap_token"])
    assert seen[-1].phase == "done"

    root, base = http_root
    digest = make_file(root / "remote.bin", 2 * MiB, seed=11)
    conf = {"requested_by": "u1", "source": {"kind": "http", "url": f"{base}/remote.bin", "sha256": digest},
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "web.bin"}}
    with pytest.raises(InvalidTransfer, match="internal address"):  # the test's server is on loopback
        pipelines.execute("stage_in", conf, storage_root=storage)
    conf["target"]["site"] = _ref(site, vault, site_key, "sciuser1", work_dir)  # the token was spent
    allowed = UrlPolicy(["127.0.0.1/32"])  # as an operator may allow an internal host
    assert pipelines.execute("stage_in", conf, storage_root=storage, url_policy=allowed)["sha256"] == digest

    conf = {"requested_by": "u1",
            "source": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "web.bin"},
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "copy.bin"}}
    assert pipelines.execute("stage_in", conf, storage_root=storage)["sha256"] == digest


def test_stage_out_to_local_storage_returns_what_the_catalogue_registers(
        tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey, session: SSHSession, work_dir: str) -> None:
    expected = make_tree(tmp_path / "results", 40)
    transfer.copy_tree(transfer.LocalTree(tmp_path / "results"), transfer.SiteDestination(session, work_dir), "out")
    conf = {"requested_by": "u1", "dataset_id": None, "label": "run 7 results",
            "source": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "out"},
            "target": {"kind": "local", "path": "results/run7"}}
    result = pipelines.execute("stage_out", conf, storage_root=tmp_path / "storage")
    assert result["kind"] == "directory" and result["files"] == 40
    assert result["sha256"] == transfer.tree_digest(expected)
    assert result["source"] == {"kind": "site", "site": "local", "login": "sciuser1", "path": "out"}
    assert result["target"] == {"kind": "local", "path": str((tmp_path / "storage/results/run7").resolve())}
    assert transfer.local_manifest(tmp_path / "storage/results/run7") == expected


def test_image_transfer_from_the_image_store(tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey,
                                             session: SSHSession, work_dir: str, http_root: tuple[Path, str]) -> None:
    root, base = http_root
    digest = make_file(root / "images" / "app.sif", 5 * MiB, seed=12)
    conf = {"requested_by": "u1", "source": {"kind": "http", "url": f"{base}/images/app.sif", "sha256": digest,
                                             "internal": True},  # the gateway's own ticket URL
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir),
                       "path": "images/app.sif"}}
    result = pipelines.execute("image_transfer", conf, storage_root=tmp_path)
    assert result["sha256"] == digest
    assert session.run(["sha256sum", f"{work_dir}/images/app.sif"], check=True).stdout.split()[0] == digest
    wrong = dict(conf, source={"kind": "local", "path": "x"})
    with pytest.raises(InvalidTransfer, match="does not read from a 'local' source"):
        pipelines.execute("image_transfer", wrong, storage_root=tmp_path)


def test_site_to_site_between_two_site_users(tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey,
                                             session: SSHSession, work_dir: str, session2: SSHSession,
                                             work_dir2: str) -> None:
    digest = make_file(tmp_path / "f.bin", 4 * MiB, seed=13)
    transfer.copy_file(transfer.LocalFile(tmp_path / "f.bin"), transfer.SiteDestination(session, work_dir), "f.bin")
    src, dst = _ref(site, vault, site_key, "sciuser1", work_dir), _ref(site, vault, site_key, "sciuser2", work_dir2)
    conf = {"requested_by": "u1", "source": {"kind": "site", "site": src, "path": "f.bin"},
            "target": {"kind": "site", "site": dst, "path": "from-sciuser1.bin"}}
    result = pipelines.execute("site_to_site", conf, storage_root=tmp_path)
    assert result["sha256"] == digest and result["target"]["login"] == "sciuser2"
    assert _token_is_spent(vault, src["wrap_token"]) and _token_is_spent(vault, dst["wrap_token"])


def test_site_sources_with_shell_metacharacters_are_just_names(
        tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey, session: SSHSession, work_dir: str,
        session2: SSHSession, work_dir2: str) -> None:
    """A site path is an argument, never shell text: a file and a folder whose names would run
    commands if interpolated are staged out (file and tar paths) and copied site to site intact."""
    name = "a b;$(touch pwned)`touch pwned2`'\"&|.bin"
    folder = "r $(touch pwned3);x"
    digest = make_file(tmp_path / "f.bin", 1 * MiB, seed=21)
    transfer.copy_file(transfer.LocalFile(tmp_path / "f.bin"), transfer.SiteDestination(session, work_dir), name)
    expected = make_tree(tmp_path / "tree", 12)
    transfer.copy_tree(transfer.LocalTree(tmp_path / "tree"), transfer.SiteDestination(session, work_dir), folder)
    storage = tmp_path / "storage"

    def source(path: str) -> dict[str, Any]:
        return {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": path}

    out = pipelines.execute("stage_out", {"requested_by": "u1", "source": source(name),
                                          "target": {"kind": "local", "path": "out/f.bin"}}, storage_root=storage)
    assert out["sha256"] == digest and transfer.sha256_file(storage / "out/f.bin") == digest
    out = pipelines.execute("stage_out", {"requested_by": "u1", "source": source(folder),
                                          "target": {"kind": "local", "path": "out/tree"}}, storage_root=storage)
    assert out["files"] == 12 and transfer.local_manifest(storage / "out/tree") == expected
    copied = pipelines.execute("site_to_site", {
        "requested_by": "u1", "source": source(name),
        "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser2", work_dir2), "path": name}},
        storage_root=tmp_path)
    assert copied["sha256"] == digest
    for user_session, base in ((session, work_dir), (session2, work_dir2)):
        for marker in ("pwned", "pwned2", "pwned3"):
            assert user_session.run(["test", "-e", f"{base}/{marker}"]).exit_code != 0
            assert user_session.run(["test", "-e", marker]).exit_code != 0  # nor in the login's home
    assert not list(Path.cwd().glob("pwned*")) and not list(storage.rglob("pwned*"))


def test_scheduled_sync_mirrors_with_a_key_limited_vault_token(tmp_path: Path, site: SiteInfo, vault: Vault,
                                                               vault_info: VaultInfo, site_key: SiteKey,
                                                               session: SSHSession, work_dir: str) -> None:
    storage = tmp_path / "storage"
    make_tree(storage / "datasets" / "inputs", 30)
    # The operator's token for scheduled syncs may read the delegated key and nothing else.
    root = hvac.Client(url=vault_info.addr, token=vault_info.root_token())
    policy = f"sync-{site_key.key_id[:8]}"
    root.sys.create_or_update_policy(policy, (
        f'path "{vault_info.mount}/data/{Vault.ssh_key_path(TEST_USER, site_key.key_id)}" '
        '{ capabilities = ["read"] }'))
    token = root.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    (tmp_path / "sync.token").write_text(token)
    (tmp_path / "sync.token").chmod(0o600)
    ref = {k: v for k, v in site_ref(site, vault, site_key, "sciuser1", work_dir).model_dump().items()
           if k not in ("wrap_token", "vault_addr")}
    mirrors = [{"name": "inputs", "requested_by": "u1", "source": {"kind": "local", "path": "datasets/inputs"},
                "target": {"kind": "site", "path": "mirror/inputs", "site": {**ref, "owner_id": TEST_USER}}}]
    (tmp_path / "mirrors.json").write_text(json.dumps(mirrors))
    settings = Settings(vault_addr=vault.addr, vault_mount=vault.mount, pipelines_storage_root=storage,
                        pipelines_sync_file=tmp_path / "mirrors.json",
                        pipelines_sync_vault_token_file=tmp_path / "sync.token")
    first = run_scheduled(settings)
    assert first[0]["ok"] and first[0]["files"] == 30 and first[0]["resumed_from"] == 0
    # One file changes, one disappears: the next run sends one file and removes the other.
    changed = sorted((storage / "datasets" / "inputs").rglob("*.dat"))
    changed[0].write_bytes(b"new content")
    changed[1].unlink()
    second = run_scheduled(settings)
    assert second[0]["files"] == 29 and second[0]["resumed_from"] == 28
    assert transfer.remote_manifest(session, f"{work_dir}/mirror/inputs") == \
        transfer.local_manifest(storage / "datasets" / "inputs")


def test_a_bad_conf_spends_its_tokens_and_says_why(tmp_path: Path, site: SiteInfo, vault: Vault,
                                                    site_key: SiteKey, work_dir: str) -> None:
    ref = _ref(site, vault, site_key, "sciuser1", work_dir)
    bad = {"requested_by": "u1", "source": {"kind": "local", "path": "x"},
           "target": {"kind": "site", "site": ref, "path": "x"}, "unexpected": True}
    with pytest.raises(InvalidTransfer, match="unexpected"):
        pipelines.execute("stage_in", bad, storage_root=tmp_path)
    assert _token_is_spent(vault, ref["wrap_token"])


def test_unresolved_dataset_fails_with_no_fallback(tmp_path: Path, site: SiteInfo, vault: Vault,
                                                   site_key: SiteKey, work_dir: str) -> None:
    conf = {"requested_by": "u1", "dataset_id": "0" * 32,
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "x"}}
    with pytest.raises(DatasetUnresolved, match="no fallback"):
        pipelines.execute("stage_in", conf, storage_root=tmp_path)


def test_a_token_works_once(tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey, work_dir: str) -> None:
    make_file(tmp_path / "s" / "a.bin", 1024)
    ref = _ref(site, vault, site_key, "sciuser1", work_dir)
    conf = {"requested_by": "u1", "source": {"kind": "local", "path": "a.bin"},
            "target": {"kind": "site", "site": ref, "path": "a.bin"}}
    pipelines.execute("stage_in", conf, storage_root=tmp_path / "s")
    with pytest.raises(CredentialUnavailable, match="already used"):
        pipelines.execute("stage_in", dict(conf, overwrite=True), storage_root=tmp_path / "s")


def test_escape_through_the_conf_is_refused(tmp_path: Path, site: SiteInfo, vault: Vault, site_key: SiteKey,
                                            work_dir: str) -> None:
    make_file(tmp_path / "s" / "a.bin", 1024)
    conf = {"requested_by": "u1", "source": {"kind": "local", "path": "../../../../etc/hostname"},
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir), "path": "a"}}
    with pytest.raises(PathOutsideWorkDir):
        pipelines.execute("stage_in", conf, storage_root=tmp_path / "s")
    conf = {"requested_by": "u1", "source": {"kind": "local", "path": "a.bin"},
            "target": {"kind": "site", "site": _ref(site, vault, site_key, "sciuser1", work_dir),
                       "path": "../../sciuser2/x"}}
    with pytest.raises(PathOutsideWorkDir):
        pipelines.execute("stage_in", conf, storage_root=tmp_path / "s")
