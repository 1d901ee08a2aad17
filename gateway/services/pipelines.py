"""Pipeline runs for users: checked, credentialed with single-use Vault tokens, run by Airflow.

Order of a start, so that nothing happens on a refusal: the pipeline exists; every SSH key named
is the caller's own (another user's key is "not found"); a catalogue dataset is readable by the
caller and resolves to a location (no fallback); the source and target fit the pipeline; then,
last, each key is wrapped into a single-use Vault token and the DAG run is triggered. If the
trigger fails the tokens are spent at once.

Who started a run is the non-secret ``requested_by`` tag in its ``conf``; Airflow's run table is
the one record of runs (no second copy to keep in step). A successful ``stage_out`` is registered
in the catalogue the first time its result is read, under a dataset id derived from the run id,
so registering twice is impossible.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.orm import Session

from data_logistics import pipelines as dl
from data_logistics.client import AirflowClient, RunStatus, new_run_id
from data_logistics.credentials import burn
from data_logistics.errors import DatasetUnresolved, InvalidTransfer, PipelineNotFound
from data_logistics.urls import policy_for
from gateway.errors import NotFound
from gateway.persistence.models import Role, SSHKey, User
from gateway.schemas.pipelines import PipelineOut, PipelineRunCreate, PipelineRunOut
from gateway.services import sites as site_service
from gateway.services.ssh_keys import get_owned, resolve_login
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)

_clients: dict[tuple[str, str], AirflowClient] = {}
_lock = threading.Lock()


def airflow(settings: Settings) -> AirflowClient:
    """One Airflow client per (url, user), kept for the process (it caches its JWT)."""
    key = (settings.airflow_url, settings.airflow_username)
    with _lock:
        if key not in _clients:
            _clients[key] = AirflowClient.from_settings(settings)
        return _clients[key]


def _check_pipeline(name: str) -> str:
    if name not in dl.PIPELINES:
        raise NotFound(f"no pipeline {name!r}", hint=f"pipelines: {', '.join(dl.PIPELINES)}", pipeline=name)
    return name


def list_pipelines(settings: Settings) -> list[PipelineOut]:
    dags = {d["dag_id"]: d for d in airflow(settings).list_dags()}
    out = []
    for name in dl.PIPELINES:
        dag = dags.get(name, {})
        sources, targets = dl.SHAPES[name]
        schedule = dag.get("timetable_summary") or dag.get("timetable_description")
        out.append(PipelineOut(name=name, description=dag.get("description") or "", schedule=schedule,
                               paused=dag.get("is_paused"), source_kinds=sorted(sources), target_kinds=sorted(targets)))
    return out


# ------------------------------------------------------------------------------------------
# Building a conf


class _SitePlan:
    """A site the run reaches, with the caller's key: the token is made only at the very end."""

    def __init__(self, db: Session, user: User, site_name: str, key: SSHKey, login: str | None) -> None:
        self.site = site_service.get(db, site_name)
        self.key = key
        self.login = resolve_login(key, login)
        self.user = user

    def ref(self, vault: Vault, settings: Settings, label: str) -> dict[str, Any]:
        """The site reference with a single-use token: for the stored key, or, on a site that
        trusts the CA, a new key and a certificate whose key id is ``label``."""
        ttl = settings.pipelines_wrap_ttl
        if self.site.ssh_certificates:
            issued = vault.issue_ssh_credential(self.login, label, settings.ssh_certificate_ttl)
            assert issued.certificate is not None
            token = vault.wrap_data({"private_key": issued.private_key, "certificate": issued.certificate}, ttl)
        else:
            token = vault.wrap(Vault.ssh_key_path(self.user.id, self.key.id), ttl)
        return {
            "site": self.site.name, "host": self.site.login_host, "port": self.site.port,
            "host_key": self.site.host_key, "login": self.login,
            "work_dir": site_service.work_dir_for(self.site, self.login),
            "key_id": self.key.id, "vault_addr": vault.addr, "wrap_token": token,
        }


def _site_path(url: str, field: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.netloc:
        raise InvalidTransfer(f"{field}: an sftp URL names a registered site: sftp://<site>/<path>", field=field)
    path = unquote(parts.path)
    path = path[1:] if path.startswith("/") else path  # sftp://site/rel; sftp://site//abs/path
    if not path:
        raise InvalidTransfer(f"{field}: the URL has no path", field=field)
    return parts.netloc, path


def _file_path(url: str, field: str) -> str:
    if url.startswith("file://"):
        path = unquote(urlsplit(url).path)
    else:
        path = unquote(url.removeprefix("file:"))
    if not path:
        raise InvalidTransfer(f"{field}: the file URL has no path", field=field)
    return path


USERS_AREA = "users"


def user_area(user_id: str) -> str:
    """A user's own folder in the pipelines' storage (relative to its root): their ``file:`` paths
    and their stage-out results live there, and nobody else's run reads or writes it."""
    return f"{USERS_AREA}/{user_id}"


def _relative(path: str, base: str, field: str, what: str) -> str:
    """``path`` (absolute, or relative to ``base``) as a path inside ``base``; refuses escapes."""
    if path.startswith("/"):
        absolute = posixpath.normpath(path)
        if not absolute.startswith(base.rstrip("/") + "/"):
            raise InvalidTransfer(f"{field}: {path!r} is not inside {what}", field=field,
                                  hint="give a path relative to your own storage folder, or name a dataset you "
                                       "may read (dataset:<id>)")
        path = absolute[len(base.rstrip("/")) + 1:]
    relative = posixpath.normpath(path)
    if relative in (".", "..") or relative.startswith("../"):
        raise InvalidTransfer(f"{field}: {path!r} leaves {what}", field=field)
    return relative


def own_file(settings: Settings, user_id: str, url: str, field: str) -> dict[str, str]:
    """A user's ``file:`` URL as a path in their own folder of the storage (checked before any run)."""
    area = user_area(user_id)
    base = str(settings.pipelines_storage_root / area)
    return {"area": area, "path": _relative(_file_path(url, field), base, field, "your own storage folder")}


def owned_file(storage_root: Path, owner_id: str, path: str, what: str) -> dict[str, Any]:
    """A file location that belongs to ``owner_id`` (a catalogue dataset's, a storage target's),
    confined to their own folder or to the shared part of the storage outside ``users/``: no
    dataset or storage target points its readers at someone else's files."""
    root = str(storage_root)
    relative = _relative(path, root, "source", "the pipelines' storage")
    parts = relative.split("/")
    if parts[0] != USERS_AREA:
        return {"area": None, "path": relative}
    if len(parts) < 3 or parts[1] != owner_id:
        raise InvalidTransfer(f"{what} points into another user's storage folder", field="source",
                              hint="a file location must lie in its owner's own folder of the storage")
    return {"area": user_area(owner_id), "path": "/".join(parts[2:])}


STAGEABLE = ("sftp", "file", "http", "https")  # the locations a stage-in pipeline reads


def resolve_dataset(db: Session, user_id: str, username: str, admin: bool,
                    dataset_id: str) -> tuple[str, str | None, str]:
    """(location URL, checksum, owner id) of a dataset the caller may read and stage-in can read.

    Raises the catalogue's DatasetNotFound for an absent or unreadable one, DatasetUnresolved for
    one without a location (or on storage no pipeline reads). Used when a run starts and, earlier,
    when an invocation is checked, so both refuse the same datasets."""
    try:
        from catalogue import service as catalogue
    except ImportError as exc:
        raise DatasetUnresolved("the data catalogue is not installed; give a URL instead",
                                dataset_id=dataset_id) from exc
    who = catalogue.Principal(user_id, username, admin)
    try:
        resolved = catalogue.resolve(db, who, dataset_id)
    except Exception as exc:
        if type(exc).__name__ == "Unresolvable":
            raise DatasetUnresolved(str(getattr(exc, "message", exc)), hint=getattr(exc, "hint", None),
                                    dataset_id=dataset_id) from exc
        raise
    url = resolved.url
    if resolved.protocol == "sftp":
        url = f"sftp://{resolved.site}/{resolved.path}"  # absolute path: sftp://site//abs
    elif resolved.protocol == "file":
        url = f"file:{resolved.path}"
    elif resolved.protocol not in STAGEABLE:
        raise DatasetUnresolved(f"dataset {dataset_id!r} lives on {resolved.protocol!r} storage, which the "
                                "pipelines cannot read yet", hint=f"stage-in reads {', '.join(STAGEABLE)} locations",
                                dataset_id=dataset_id)
    return url, resolved.checksum_sha256, resolved.owner_id


def start_run(db: Session, vault: Vault, settings: Settings, user: User, pipeline: str,
              data: PipelineRunCreate, run_id: str | None = None, internal_source: bool = False,
              on_behalf: str | None = None, source_owner: str | None = None) -> PipelineRunOut:
    """Check everything, then wrap the keys and trigger the DAG run.

    ``run_id`` makes the trigger idempotent for callers that may retry (the engine derives it
    from the operation's tag); a new id is made otherwise. ``internal_source`` (never from a
    request) exempts a URL the gateway made itself (an image ticket) from the public-address rule.
    ``on_behalf`` (an execution or deployment) names certificates issued for the run.
    ``source_owner``: a ``file:`` source that is not the caller's own path but a location owned by
    that user (a storage target a mirror copies; its ownership was checked when it was made)."""
    _check_pipeline(pipeline)
    key = get_owned(db, user, data.ssh_key)
    target_key = get_owned(db, user, data.target_ssh_key) if data.target_ssh_key else key
    dataset_id, owner_id = None, source_owner
    what = "the storage target"
    source_url, sha256 = data.source, data.sha256
    if source_url.startswith("dataset:"):
        dataset_id = source_url.removeprefix("dataset:")
        source_url, declared, owner_id = resolve_dataset(db, user.id, user.username, user.role == Role.ADMIN,
                                                         dataset_id)
        sha256, what = sha256 or declared, f"dataset {dataset_id!r}"
    sources, targets = dl.SHAPES[pipeline]

    plans: dict[str, tuple[_SitePlan, str]] = {}
    source: dict[str, Any]
    if source_url.startswith(("https://", "http://")):
        if not internal_source:
            policy_for(settings).check(source_url)
        source = {"kind": "http", "url": source_url, "internal": internal_source}
    elif source_url.startswith("file:") and owner_id is not None:
        source = {"kind": "local", **owned_file(settings.pipelines_storage_root, owner_id,
                                                _file_path(source_url, "source"), what)}
    elif source_url.startswith("file:"):
        source = {"kind": "local", **own_file(settings, user.id, source_url, "source")}
    elif source_url.startswith("sftp://"):
        site_name, path = _site_path(source_url, "source")
        plans["source"] = (_SitePlan(db, user, site_name, key, data.login), path)
        source = {"kind": "site", "path": path}
    else:
        raise InvalidTransfer("source must be an https, http, file or sftp URL, or dataset:<id>", field="source")
    if sha256:
        source["sha256"] = sha256.lower().removeprefix("sha256:")
    target: dict[str, Any]
    if data.target.startswith("sftp://"):
        site_name, path = _site_path(data.target, "target")
        login = data.target_login or (data.login if target_key is key else None)
        plans["target"] = (_SitePlan(db, user, site_name, target_key, login), path)
        target = {"kind": "site", "path": path}
    elif data.target.startswith("file:"):
        target = {"kind": "local", **own_file(settings, user.id, data.target, "target")}
    else:
        raise InvalidTransfer("target must be an sftp://<site>/<path> or file:<path> URL", field="target")
    if source["kind"] not in sources:
        raise InvalidTransfer(f"{pipeline} cannot read from a {source['kind']} source; it reads "
                              f"{', '.join(sorted(sources))}", field="source")
    if target["kind"] not in targets:
        raise InvalidTransfer(f"{pipeline} cannot write to a {target['kind']} target; it writes "
                              f"{', '.join(sorted(targets))}", field="target")

    # Last: the single-use tokens, then the run.
    tokens: list[str] = []
    run_id = run_id or new_run_id()
    for side, (plan, _path) in plans.items():
        ref = plan.ref(vault, settings, on_behalf or f"pipeline:{run_id}")
        tokens.append(ref["wrap_token"])
        (source if side == "source" else target)["site"] = ref
    conf = {
        "requested_by": user.id, "dataset_id": dataset_id, "source": source, "target": target,
        "overwrite": data.overwrite, "label": data.label,
        "register_result": data.register_result and pipeline == "stage_out",
        "mirror": pipeline == "sync",  # sync keeps the target identical: only changes are sent
        "summary": {"source": data.source, "target": data.target},
    }
    try:
        run = airflow(settings).trigger(pipeline, conf, run_id=run_id, note=f"by {user.username}")
    except Exception:
        for token in tokens:
            burn(vault.addr, token)
        raise
    log.info("pipeline %s run %s started by %s", pipeline, run["dag_run_id"], user.username)
    return _out(pipeline, run, conf)


# ------------------------------------------------------------------------------------------
# Reading runs


def _owned_conf(run: dict[str, Any], user: User) -> dict[str, Any] | None:
    conf = run.get("conf") or {}
    if conf.get("requested_by") == user.id or user.role == Role.ADMIN:
        return dict(conf)
    return None


def _public(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    if not spec:
        return None
    out = {k: v for k, v in spec.items() if k != "site"}
    if isinstance(spec.get("site"), dict):
        out["site"] = spec["site"].get("site")
        out["login"] = spec["site"].get("login")
    return out


def _out(pipeline: str, run: dict[str, Any], conf: dict[str, Any], status: RunStatus | None = None
         ) -> PipelineRunOut:
    out = PipelineRunOut(
        id=run["dag_run_id"], pipeline=pipeline, state=str(run.get("state")),
        requested_by=str(conf.get("requested_by")), label=conf.get("label"),
        source=_public(conf.get("source")), target=_public(conf.get("target")), dataset_id=conf.get("dataset_id"),
        start_date=run.get("start_date"), end_date=run.get("end_date"),
    )
    if status is not None:
        out.state, out.tasks, out.progress, out.error = status.state, status.tasks, status.progress, status.error
        out.result = status.result if isinstance(status.result, dict) else None
    return out


def list_runs(settings: Settings, user: User, pipeline: str | None = None, limit: int = 50) -> list[PipelineRunOut]:
    """The caller's runs (an admin's: everyone's), newest first."""
    dag = _check_pipeline(pipeline) if pipeline else "~"
    out = []
    for run in airflow(settings).list_runs(dag, limit=200):
        if run.get("dag_id") not in dl.PIPELINES:
            continue
        conf = _owned_conf(run, user)
        if conf is not None:
            out.append(_out(run["dag_id"], run, conf))
        if len(out) >= limit:
            break
    return out


def _get_owned_run(settings: Settings, user: User, pipeline: str, run_id: str) -> tuple[dict[str, Any],
                                                                                        dict[str, Any]]:
    _check_pipeline(pipeline)
    try:
        run = airflow(settings).get_run(pipeline, run_id)
    except PipelineNotFound:
        run = {}
    conf = _owned_conf(run, user) if run else None
    if conf is None:
        raise NotFound(f"you have no {pipeline} run {run_id!r}", hint="list yours with 'waas pipelines runs'")
    return run, conf


def get_run(db: Session, settings: Settings, user: User, pipeline: str, run_id: str,
            with_logs: bool = False) -> PipelineRunOut:
    """A run with task states, progress, result or error, optionally its log."""
    run, conf = _get_owned_run(settings, user, pipeline, run_id)
    client = airflow(settings)
    out = _out(pipeline, run, conf, client.status(pipeline, run_id))
    if with_logs:
        out.logs = client.logs(pipeline, run_id)
    if out.state == "success" and out.result and conf.get("register_result"):
        out.registered_dataset, out.registration_error = register_result(db, user, run_id, out.result)
    return out


def cancel_run(settings: Settings, user: User, pipeline: str, run_id: str) -> PipelineRunOut:
    """Stop a run and spend any token it has not used yet."""
    run, conf = _get_owned_run(settings, user, pipeline, run_id)
    client = airflow(settings)
    if run.get("state") not in ("success", "failed"):
        run = client.cancel(pipeline, run_id)
    for addr, token in dl._tokens_in(conf):
        burn(addr, token)
    return _out(pipeline, run, conf, client.status(pipeline, run_id))


# ------------------------------------------------------------------------------------------
# Catalogue registration of stage-out results


def _dataset_id_for(run_id: str) -> str:
    return hashlib.sha256(f"hpcwaas-pipeline-run:{run_id}".encode()).hexdigest()[:32]


def result_location(result: dict[str, Any]) -> str:
    """Where a stage-out result landed, as a catalogue location URL."""
    target = result["target"]
    if target["kind"] == "site":
        return f"sftp://{target['site']}{target['path']}"
    return f"file://{target['path']}"


def register_result(db: Session, user: User, run_id: str, result: dict[str, Any],
                    about: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """Register a stage-out result as a new dataset (once: the id derives from the run id).

    Returns (dataset id, error message). The dataset records the checksum, the size and where the
    data came from (provenance: the source, the source dataset, the pipeline run, and ``about``:
    the execution and deployment that made it, whose full record is at
    ``/executions/{id}/provenance``)."""
    try:
        from catalogue import service as catalogue
        from catalogue.schemas import DatasetCreate
    except ImportError:
        return None, "the data catalogue is not installed"
    who = catalogue.Principal(user.id, user.username, user.role == Role.ADMIN)
    dataset_id = _dataset_id_for(run_id)
    try:
        catalogue.get_dataset(db, who, dataset_id)
        return dataset_id, None
    except Exception:  # noqa: S110 - not registered yet
        pass
    provenance = {"pipeline": result.get("pipeline"), "run_id": run_id, "source": result.get("source"),
                  "source_dataset": result.get("dataset_id"), "finished_at": result.get("finished_at"), **(about or {})}
    try:
        data = DatasetCreate(
            title=(result.get("label") or f"stage-out of {result['source'].get('path', 'data')}")[:200],
            description=f"Produced by pipeline run {run_id}.",
            location=result_location(result),
            size_bytes=result.get("size"),
            checksum_sha256=result.get("sha256") if result.get("kind") == "file" else None,
            metadata={"provenance": provenance, "tree_sha256": result.get("sha256"), "files": result.get("files")},
        )
        catalogue.create_dataset(db, who, data, dataset_id=dataset_id)
    except Exception as exc:
        db.rollback()
        log.warning("registering the result of run %s failed: %s", run_id, exc)
        return None, f"registration failed: {getattr(exc, 'message', exc)}"
    return dataset_id, None
