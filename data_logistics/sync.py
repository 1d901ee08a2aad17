"""Scheduled mirrors for the ``sync`` pipeline: storage targets kept identical to site paths.

An operator lists the mirrors in a JSON file (``HPCWAAS_PIPELINES_SYNC_FILE``) and sets the
schedule (``HPCWAAS_PIPELINES_SYNC_SCHEDULE``, cron or ``@hourly``). A scheduled run has no
gateway behind it to hand over a single-use token, so the sync task holds its own Vault token
(``HPCWAAS_PIPELINES_SYNC_VAULT_TOKEN_FILE``, a 0600 file) whose policy may read only the keys
delegated to mirrors. For each mirror it wraps that key into a single-use token and runs the
same code path as an interactive run, so the key is still unwrapped only inside the transfer.

A mirror entry (no secret in it)::

    {"name": "inputs-to-cluster", "requested_by": "<user id>",
     "source": {"kind": "local", "path": "datasets/inputs"},
     "target": {"kind": "site", "path": "mirror/inputs",
                "site": {"site": "local", "host": "127.0.0.1", "port": 12222, "host_key": "ssh-ed25519 ...",
                         "login": "sciuser1", "work_dir": "/home/sciuser1/hpcwaas", "key_id": "<key id>",
                         "owner_id": "<user id>"}}}
"""

from __future__ import annotations

import json
import logging
from typing import Any

from data_logistics import pipelines
from data_logistics.errors import InvalidTransfer, StagingError
from data_logistics.transfer import ProgressFn
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)


def load_mirrors(settings: Settings) -> list[dict[str, Any]]:
    """The operator's mirror definitions ([] when none are configured)."""
    if settings.pipelines_sync_file is None or not settings.pipelines_sync_file.exists():
        return []
    data = json.loads(settings.pipelines_sync_file.read_text())
    if not isinstance(data, list):
        raise InvalidTransfer(f"{settings.pipelines_sync_file} must hold a JSON list of mirrors")
    return data


def _with_token(mirror: dict[str, Any], vault: Vault, ttl: str) -> dict[str, Any]:
    conf: dict[str, Any] = json.loads(json.dumps(mirror))  # a deep copy
    for side in ("source", "target"):
        spec = conf.get(side) or {}
        site = spec.get("site")
        if isinstance(site, dict):
            owner = site.pop("owner_id")
            site["vault_addr"] = vault.addr
            site["wrap_token"] = vault.wrap(Vault.ssh_key_path(owner, site["key_id"]), ttl)
    conf.pop("name", None)
    conf["mirror"] = True
    return conf


def run_scheduled(settings: Settings, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Bring every mirror up to date; one result per mirror (errors reported, others continue)."""
    mirrors = load_mirrors(settings)
    if not mirrors:
        log.info("no mirrors configured (HPCWAAS_PIPELINES_SYNC_FILE); nothing to do")
        return []
    token_file = settings.pipelines_sync_vault_token_file
    if token_file is None or not token_file.exists():
        raise InvalidTransfer("scheduled sync needs HPCWAAS_PIPELINES_SYNC_VAULT_TOKEN_FILE")
    vault = Vault(settings.vault_addr, token_file.read_text().strip(), mount=settings.vault_mount)
    results: list[dict[str, Any]] = []
    failed = 0
    for mirror in mirrors:
        name = str(mirror.get("name", "?"))
        try:
            conf = _with_token(mirror, vault, settings.pipelines_wrap_ttl)
            result = pipelines.execute("sync", conf, storage_root=settings.pipelines_storage_root,
                                       progress=progress, ssh_timeout=settings.ssh_connect_timeout)
            results.append({"name": name, "ok": True, **result})
        except (HpcwaasError, KeyError, ValueError) as exc:
            failed += 1
            log.error("mirror %s failed: %s", name, exc)
            results.append({"name": name, "ok": False, "error": str(exc)})
    if failed:
        raise StagingError(f"{failed} of {len(mirrors)} mirror(s) failed: "
                           + "; ".join(r["error"] for r in results if not r["ok"]))
    return results
