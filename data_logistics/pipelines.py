"""What each pipeline does, as plain functions over a validated ``conf`` (the DAGs call these).

A run's ``conf`` is built by the gateway (or by an operator for ``sync``). It carries ids, paths,
URLs, pinned host keys and single-use Vault wrapping tokens, never a key or a reusable token:

.. code-block:: json

    {"pipeline": "stage_in", "requested_by": "<user id>", "dataset_id": null,
     "source": {"kind": "http", "url": "https://...", "sha256": null},
     "target": {"kind": "site", "site": {<SiteRef>}, "path": "inputs/data.bin"},
     "overwrite": false}

Sources are ``http`` (https or http URL), ``local`` (a path in the worker's storage root: the
``file:`` scheme and local storage targets), or ``site`` (a path in a site user's work dir: the
``sftp:`` scheme). Targets are ``site`` or ``local``. :data:`SHAPES` says which combinations each
pipeline accepts. Every wrapping token in ``conf`` is spent (unwrapped) before anything else
happens, whether the run then succeeds or fails, so a ``conf`` left in Airflow's database is
worthless.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_logistics import openssh, transfer
from data_logistics.credentials import SiteRef, burn, unwrap_credential
from data_logistics.errors import DatasetUnresolved, InvalidTransfer
from data_logistics.openssh import OpenSSHLink
from data_logistics.transfer import Destination, LocalDestination, ProgressFn, SiteDestination, TransferResult
from data_logistics.urls import UrlPolicy
from hpcwaas.ssh import SSHCredential, SSHSession, connect

log = logging.getLogger(__name__)

PIPELINES = ("stage_in", "stage_out", "image_transfer", "site_to_site", "sync")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpSource(_Spec):
    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    sha256: str | None = None
    internal: bool = Field(default=False, description="a URL the gateway made itself (an image ticket): "
                           "exempt from the public-address policy; never set from a user's request")


_AREA = r"^users/[A-Za-z0-9_-]{1,64}$"


class LocalSource(_Spec):
    kind: Literal["local"]
    path: str
    sha256: str | None = None
    area: str | None = Field(default=None, pattern=_AREA,
                             description="the owner's folder in the storage the path is confined to")


class SiteSource(_Spec):
    kind: Literal["site"]
    site: SiteRef
    path: str
    sha256: str | None = None


class SiteTarget(_Spec):
    kind: Literal["site"]
    site: SiteRef
    path: str


class LocalTarget(_Spec):
    kind: Literal["local"]
    path: str
    area: str | None = Field(default=None, pattern=_AREA,
                             description="the owner's folder in the storage the path is confined to")


Source = Annotated[HttpSource | LocalSource | SiteSource, Field(discriminator="kind")]
Target = Annotated[SiteTarget | LocalTarget, Field(discriminator="kind")]

# pipeline -> (accepted source kinds, accepted target kinds)
SHAPES: dict[str, tuple[set[str], set[str]]] = {
    "stage_in": ({"http", "local", "site"}, {"site"}),
    "stage_out": ({"site"}, {"local", "site"}),
    "image_transfer": ({"http"}, {"site"}),
    "site_to_site": ({"site"}, {"site"}),
    "sync": ({"local", "site"}, {"site"}),
}


class RunConf(_Spec):
    """The ``conf`` of one run of any pipeline."""

    pipeline: str
    requested_by: str = Field(description="the gateway user id who started the run (not a secret)")
    dataset_id: str | None = Field(default=None, description="catalogue dataset the source was resolved from")
    source: Source | None = None
    target: Target
    overwrite: bool = False
    mirror: bool = Field(default=False, description="sync: update an existing copy, sending only what changed")
    label: str | None = Field(default=None, max_length=200)
    register_result: bool = Field(default=False, description="stage_out: the caller registers the result")
    summary: dict[str, str] | None = Field(default=None, description="what the user asked for, as they wrote it")

    def site_refs(self) -> list[SiteRef]:
        refs = []
        if isinstance(self.source, SiteSource):
            refs.append(self.source.site)
        if isinstance(self.target, SiteTarget):
            refs.append(self.target.site)
        return refs


def _tokens_in(raw: Any) -> Iterator[tuple[str, str]]:
    """(vault_addr, wrap_token) pairs anywhere in a raw conf (to spend them on a bad conf)."""
    if isinstance(raw, dict):
        if isinstance(raw.get("wrap_token"), str) and isinstance(raw.get("vault_addr"), str):
            yield raw["vault_addr"], raw["wrap_token"]
        for value in raw.values():
            yield from _tokens_in(value)
    elif isinstance(raw, list):
        for value in raw:
            yield from _tokens_in(value)


def parse_conf(pipeline: str, raw: dict[str, Any]) -> RunConf:
    """Validate a run's conf for ``pipeline``; a bad conf spends its tokens and fails clearly."""
    try:
        conf = RunConf.model_validate({"pipeline": pipeline, **raw})
        if conf.pipeline != pipeline:
            raise InvalidTransfer(f"this conf is for {conf.pipeline!r}, not {pipeline!r}", field="pipeline")
        sources, targets = SHAPES[pipeline]
        if conf.source is None:
            if conf.dataset_id:
                raise DatasetUnresolved(
                    f"dataset {conf.dataset_id!r} was not resolved to a location; the run stops here "
                    "(there is no fallback location)",
                    hint="resolve the dataset through the catalogue before starting the run",
                    dataset_id=conf.dataset_id,
                )
            raise InvalidTransfer("the conf has no source", field="source")
        if conf.source.kind not in sources:
            raise InvalidTransfer(f"{pipeline} does not read from a {conf.source.kind!r} source", field="source")
        if conf.target.kind not in targets:
            raise InvalidTransfer(f"{pipeline} does not write to a {conf.target.kind!r} target", field="target")
    except (ValidationError, InvalidTransfer, DatasetUnresolved) as exc:
        spent = sum(burn(addr, token) for addr, token in _tokens_in(raw))
        if spent:
            log.warning("the conf was refused; %d single-use token(s) spent", spent)
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise InvalidTransfer(f"invalid conf at {where}: {first.get('msg')}", field=where) from None
        raise
    return conf


@contextlib.contextmanager
def _sessions(refs: list[SiteRef], timeout: float) -> Iterator[list[tuple[SSHSession, OpenSSHLink | None]]]:
    """Spend every token first, then connect to each site (host keys pinned).

    Each site gets a paramiko session (commands) and, when OpenSSH is installed, an OpenSSH link
    for the bulk stream (its key in a private agent)."""
    keys: list[SSHCredential | None] = []
    failure: Exception | None = None
    for ref in refs:  # all tokens are spent even if one of them fails
        try:
            keys.append(unwrap_credential(ref.vault_addr, ref.wrap_token))
        except Exception as exc:
            keys.append(None)
            failure = failure or exc
    if failure is not None:
        keys.clear()
        raise failure
    with contextlib.ExitStack() as stack:
        sessions = []
        for ref, key in zip(refs, keys, strict=True):
            assert key is not None
            session = stack.enter_context(connect(ref.endpoint, ref.login, key, timeout=timeout))
            link = stack.enter_context(OpenSSHLink(ref.endpoint, ref.login, key)) if openssh.available() else None
            sessions.append((session, link))
            log.info("connected to site %s (%s) as %s with key %s", ref.site, ref.endpoint.label, ref.login,
                     ref.key_id)
        keys.clear()
        yield sessions


def execute(
    pipeline: str,
    raw_conf: dict[str, Any],
    *,
    storage_root: Path,
    progress: ProgressFn | None = None,
    ssh_timeout: float = 10.0,
    url_policy: UrlPolicy | None = None,
) -> dict[str, Any]:
    """Run one transfer pipeline; the JSON-able result the DAG returns (its XCom ``return_value``).

    Every request to a user's http(s) source, redirects included, passes ``url_policy`` (public
    addresses only when none is given)."""
    conf = parse_conf(pipeline, raw_conf)
    refs = conf.site_refs()
    began = datetime.now(UTC)
    with _sessions(refs, ssh_timeout) as sessions:
        by_ref = dict(zip((id(r) for r in refs), sessions, strict=True))
        source = _open_source(conf, by_ref, storage_root, url_policy or UrlPolicy())
        destination, path = _open_target(conf, by_ref, storage_root)
        try:
            result = _copy(conf, source, destination, path, progress)
        finally:
            if isinstance(source, transfer.HttpFile):
                source.close()
    return _result(conf, result, began)


def _open_source(conf: RunConf, sessions: dict[int, tuple[SSHSession, OpenSSHLink | None]], storage_root: Path,
                 policy: UrlPolicy) -> transfer.FileSource | transfer.TreeSource:
    src = conf.source
    if isinstance(src, HttpSource):
        return transfer.HttpFile(src.url, src.sha256, guard=None if src.internal else policy.guard())
    if isinstance(src, LocalSource):
        return transfer.local_source(storage_root / (src.area or ""), src.path, src.sha256)
    assert isinstance(src, SiteSource)
    session, link = sessions[id(src.site)]
    return transfer.site_source(session, src.site.work_dir, src.path, src.sha256, link=link)


def _open_target(conf: RunConf, sessions: dict[int, tuple[SSHSession, OpenSSHLink | None]], storage_root: Path
                 ) -> tuple[Destination, str]:
    target = conf.target
    if isinstance(target, SiteTarget):
        session, link = sessions[id(target.site)]
        return SiteDestination(session, target.site.work_dir, link), target.path
    root = storage_root / (target.area or "")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return LocalDestination(root), target.path


def _copy(conf: RunConf, source: transfer.FileSource | transfer.TreeSource, destination: Destination, path: str,
          progress: ProgressFn | None) -> TransferResult:
    if conf.mirror and isinstance(source, transfer.TreeSource):
        return transfer.mirror_tree(source, destination, path, progress=progress)
    return transfer.copy(source, destination, path, overwrite=conf.overwrite or conf.mirror, progress=progress)


def _describe_source(conf: RunConf) -> dict[str, Any]:
    src = conf.source
    if isinstance(src, HttpSource):
        return {"kind": "http", "url": src.url}
    if isinstance(src, LocalSource):
        return {"kind": "local", "path": src.path}
    assert isinstance(src, SiteSource)
    return {"kind": "site", "site": src.site.site, "login": src.site.login, "path": src.path}


def _describe_target(conf: RunConf, final_path: str) -> dict[str, Any]:
    if isinstance(conf.target, SiteTarget):
        return {"kind": "site", "site": conf.target.site.site, "login": conf.target.site.login, "path": final_path}
    return {"kind": "local", "path": final_path}


def _result(conf: RunConf, result: TransferResult, began: datetime) -> dict[str, Any]:
    """The run's result: what landed where, its checksum, and where it came from (provenance)."""
    return {
        "pipeline": conf.pipeline,
        "requested_by": conf.requested_by,
        "dataset_id": conf.dataset_id,
        "label": conf.label,
        "source": _describe_source(conf),
        "target": _describe_target(conf, result.path),
        "kind": result.kind,
        "sha256": result.sha256,
        "size": result.size,
        "files": result.files,
        "resumed_from": result.resumed_from,
        "skipped": result.skipped[:100],
        "started_at": began.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(result.seconds, 3),
        "first_byte_at": result.first_byte_at,
    }


def progress_line(p: transfer.Progress) -> str:
    """One human line, also written to the task log (the fallback when XCom is not readable)."""
    total = f"/{p.bytes_total}" if p.bytes_total is not None else ""
    files = f"/{p.files_total}" if p.files_total is not None else ""
    return f"progress phase={p.phase} bytes={p.bytes_done}{total} files={p.files_done}{files}"


class XComProgress:
    """A progress callback that pushes to XCom (key ``progress``) and logs, at most every ``interval`` s."""

    def __init__(self, push: Any, interval: float = 1.0) -> None:
        self._push = push
        self._interval = interval
        self._last = 0.0
        self._phase = ""

    def __call__(self, p: transfer.Progress) -> None:
        now = time.monotonic()
        if p.phase == self._phase and now - self._last < self._interval:
            return
        self._last, self._phase = now, p.phase
        log.info(progress_line(p))
        with contextlib.suppress(Exception):  # progress must never fail a transfer
            self._push(p.as_dict())
