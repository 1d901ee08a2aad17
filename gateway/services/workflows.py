"""The workflow registry: register a workflow from a git repository, a folder or a CSAR as an
immutable, validated version; list, show and control who may see it.

A version's content is copied into the registry store (``<home>/registry/<workflow>/<version>``)
and made read-only, so what was validated is what gets deployed, whatever later happens to the
source. Its digest is the commit sha (git) or the SHA-256 of its content (folder, CSAR):
registering the same content again returns the existing version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import UploadFile
from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deployer.api import validate_template
from deployer.engine import HPC_SITE
from deployer.errors import Issue, TemplateError
from deployer.model import Topology, WorkflowDef
from gateway.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from gateway.persistence.models import Role, User, Visibility, Workflow, WorkflowVersion
from gateway.schemas.workflows import (
    GitSource,
    Registered,
    VersionOut,
    VisibilityIn,
    WorkflowDetail,
    WorkflowOut,
    WorkflowRegister,
    WorkflowUpdate,
)
from hpcwaas.settings import Settings

log = logging.getLogger(__name__)

_NODE_KINDS = {
    "hpcwaas.nodes.ContainerImage": "image",
    "hpcwaas.nodes.ImageTransfer": "image_transfer",
    "hpcwaas.nodes.StageIn": "stage_in",
    "hpcwaas.nodes.StageOut": "stage_out",
    "hpcwaas.nodes.BatchJob": "batch_job",
    "hpcwaas.nodes.SoftwareInstall": "software",
    "hpcwaas.nodes.HPCSite": "site",
}
# Topology inputs the gateway binds from the chosen site and SSH keys (the credentials from
# Vault); callers may not set them, and they are the only secrets a job gets.
DEPLOY_BINDINGS = ("login_host", "port", "host_key", "username", "credential", "work_dir", "software_dir")
RUN_BINDINGS = ("run_username", "run_credential", "run_work_dir")
BOUND_INPUTS = frozenset(DEPLOY_BINDINGS + RUN_BINDINGS)
_GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass
class Staged:
    """A source copied into a private staging folder, not yet validated."""

    path: Path  # folder, or the CSAR file
    digest: str
    source: dict[str, Any]


def _inside_roots(path: Path, settings: Settings) -> Path:
    resolved = path.resolve()
    for root in settings.registry_roots:
        if resolved == root.resolve() or resolved.is_relative_to(root.resolve()):
            return resolved
    roots = ", ".join(str(r) for r in settings.registry_roots)
    raise InvalidInput(
        f"{path} is not inside a registry root",
        hint=f"place the workflow under one of: {roots} (setting HPCWAAS_REGISTRY_ROOTS)",
        field="source.path",
    )


def _copy_folder(src: Path, dst: Path, limit: int) -> str:
    """Copy regular files (no symlinks, no .git) and return the SHA-256 of the content."""
    digest = hashlib.sha256()
    total = 0
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != ".git" and not (Path(dirpath) / d).is_symlink())
        for name in sorted(files):
            path = Path(dirpath) / name
            rel = path.relative_to(src)
            if path.is_symlink() or not path.is_file():
                raise InvalidInput(f"{rel} is a link or special file: only regular files can be registered",
                                   field="source.path")
            data = path.read_bytes()
            total += len(data)
            if total > limit:
                raise InvalidInput(f"the workflow is larger than {limit} bytes", field="source")
            digest.update(str(rel).encode() + b"\0" + hashlib.sha256(data).digest())
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return "sha256:" + digest.hexdigest()


def _git(repo: Path, *args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    # Arguments are separate argv entries; "--" ends options so a ref can never become a flag.
    return subprocess.run(["git", "-C", str(repo), *args], stdout=stdout, stderr=subprocess.PIPE, check=False,
                          timeout=120)


def _stage_git(source: GitSource, staging: Path, settings: Settings) -> Staged:
    url = source.url
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise InvalidInput("only local git repositories (a path or a file:// URL) can be registered",
                           field="source.url")
    repo = _inside_roots(Path(parsed.path if parsed.scheme else url), settings)
    if not _GIT_REF.fullmatch(source.ref) or ".." in source.ref:
        raise InvalidInput(f"invalid git ref {source.ref!r}", field="source.ref")
    rev = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{source.ref}^{{commit}}")
    if rev.returncode != 0:
        raise InvalidInput(f"{source.ref!r} is not a commit of {repo}: {rev.stderr.decode().strip()[:300]}",
                           field="source.ref")
    sha = rev.stdout.decode().strip()
    sub = source.subpath.strip("/")
    if sub and (".." in Path(sub).parts or Path(sub).is_absolute()):
        raise InvalidInput("subpath must stay inside the repository", field="source.subpath")
    archive = staging.parent / f"{staging.name}.tar"
    with open(archive, "wb") as out:
        proc = _git(repo, "archive", "--format=tar", sha, "--", sub or ".", stdout=out.fileno())
    if proc.returncode != 0:
        raise InvalidInput(f"{sub or '.'} is not in commit {sha[:12]}: {proc.stderr.decode().strip()[:300]}",
                           field="source.subpath")
    if archive.stat().st_size > settings.registry_max_bytes:
        raise InvalidInput(f"the workflow is larger than {settings.registry_max_bytes} bytes", field="source")
    extracted = staging.parent / f"{staging.name}.x"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")  # refuses absolute paths, .. and links out of the tree
    archive.unlink()
    root = extracted / sub if sub else extracted
    shutil.move(str(root), staging)
    shutil.rmtree(extracted, ignore_errors=True)
    return Staged(staging, f"git:{sha}" + (f":{sub}" if sub else ""),
                  {"kind": "git", "url": url, "ref": source.ref, "commit": sha, "subpath": sub})


def stage_source(data: WorkflowRegister, settings: Settings, staging: Path) -> Staged:
    """Copy a git or folder source into ``staging`` (a path that does not exist yet)."""
    src = data.source
    if src.kind == "git":
        return _stage_git(src, staging, settings)
    folder = _inside_roots(Path(src.path), settings)
    if not folder.is_dir():
        raise InvalidInput(f"{src.path} is not a folder", field="source.path")
    staging.mkdir()
    digest = _copy_folder(folder, staging, settings.registry_max_bytes)
    return Staged(staging, digest, {"kind": "folder", "path": str(folder)})


def stage_csar(content: bytes, filename: str, settings: Settings, staging: Path) -> Staged:
    """Keep an uploaded CSAR as the bundle (the deployer opens and checks it safely)."""
    if len(content) > settings.registry_max_bytes:
        raise InvalidInput(f"the CSAR is larger than {settings.registry_max_bytes} bytes", field="file")
    staging.mkdir()
    path = staging / "workflow.csar"
    path.write_bytes(content)
    return Staged(path, "sha256:" + hashlib.sha256(content).hexdigest(),
                  {"kind": "csar", "filename": filename[:200]})


def describe(topology: Topology) -> dict[str, Any]:
    """What a version declares: inputs, outputs, workflows with their inputs and steps, nodes."""

    def inputs_of(defs: dict[str, Any]) -> dict[str, Any]:
        return {
            name: {"type": d.type, "required": d.mandatory, "default": None if d.secret else d.default,
                   "secret": d.secret, "description": d.description, "constraints": d.constraints,
                   "provided": d.provided}
            for name, d in defs.items()
        }

    nodes = []
    kinds: dict[str, str] = {}
    for node in topology.nodes.values():
        kind = kinds[node.name] = next((_NODE_KINDS[t] for t in node.chain if t in _NODE_KINDS), "other")
        nodes.append({"name": node.name, "type": node.type, "kind": kind})

    def workflow_inputs(wf: WorkflowDef) -> dict[str, Any]:
        declared = inputs_of(wf.inputs)
        for name in _staged_datasets(wf, kinds):
            if name in declared:
                declared[name]["catalogue_dataset"] = True
        return declared

    return {
        "entry": topology.entry,
        "description": topology.description,
        "inputs": inputs_of(topology.inputs),
        "outputs": {name: (value if isinstance(value, str | int | float | bool) else {"expression": value})
                    for name, value in topology.outputs.items()},
        "workflows": {
            name: {"description": wf.description, "inputs": workflow_inputs(wf), "steps": list(wf.steps)}
            for name, wf in topology.workflows.items()
        },
        "nodes": nodes,
    }


def _check_secrets_suppliable(topology: Topology) -> None:
    """Refuse a mandatory secret input the gateway cannot fill: requests may not carry secret
    values (they would be stored), and only the SSH credential bindings come from Vault. Without
    this the version registers, deploys or runs, and fails for want of a value."""
    issues = [
        Issue(f"input {d.name!r}{where} is secret and has no default: the gateway does not take secret values in "
              "requests, and binds only the SSH credentials from Vault", file=topology.entry, line=d.line,
              field=f"inputs.{d.name}")
        for where, defs in [("", topology.inputs)] + [(f" of workflow {w.name!r}", w.inputs)
                                                       for w in topology.workflows.values()]
        for d in defs.values()
        if d.secret and d.mandatory and d.name not in BOUND_INPUTS
    ]
    if issues:
        raise TemplateError(issues, hint="give it a default in the template, or bind it to one of: "
                                         + ", ".join(sorted(BOUND_INPUTS)))


def _check_credentials_bound(topology: Topology) -> None:
    """Refuse a site credential the gateway does not bind: a literal ``<user_id>/<key_id>``, an input
    of the developer's own or any expression would let a template name someone else's key. The
    only credentials a workflow uses are the deploying developer's and the invoking user's."""
    allowed = [{"get_input": name} for name in ("credential", "run_credential")]
    issues = [
        Issue("an HPC site's credential must be {get_input: credential} (the developer's key, bound by the "
              f"gateway) or {{get_input: run_credential}} (the invoking user's); got {node.properties['credential']!r}",
              file=node.file or topology.entry, line=node.line, node=node.name, field="properties.credential")
        for node in topology.nodes.values()
        if node.is_a(HPC_SITE) and node.properties.get("credential") is not None
        and node.properties["credential"] not in allowed
    ]
    if issues:
        raise TemplateError(issues, hint="the gateway binds the SSH credentials: declare the inputs credential and "
                                         "run_credential and use them as they are")


def _staged_datasets(wf: WorkflowDef, kinds: Mapping[str, str]) -> set[str]:
    """The workflow inputs a stage-in step takes its ``dataset`` from (``{get_input: name}``).

    The gateway checks these name a catalogue dataset the caller can read when the workflow is
    invoked, instead of the run failing at stage-in."""
    names = set()
    for step in wf.steps.values():
        if kinds.get(step.target) != "stage_in":
            continue
        for activity in step.activities:
            call = activity.get("call_operation") if isinstance(activity, dict) else None
            inputs = call.get("inputs") if isinstance(call, dict) else None
            value = inputs.get("dataset") if isinstance(inputs, dict) else None
            if isinstance(value, dict) and list(value) == ["get_input"] and isinstance(value["get_input"], str):
                names.add(value["get_input"])
    return names


def _make_read_only(path: Path) -> None:
    for dirpath, dirs, files in os.walk(path):
        for name in files:
            (Path(dirpath) / name).chmod(stat.S_IRUSR | stat.S_IRGRP)
        for name in dirs:
            (Path(dirpath) / name).chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def store_root(settings: Settings) -> Path:
    """Where registered bundles are kept."""
    root = settings.home / "registry"
    root.mkdir(parents=True, exist_ok=True, mode=0o750)
    return root


_STAGING = ".staging-"
_STAGING_LOCK = ".lock"


@contextlib.contextmanager
def _staging_folder(root: Path) -> Iterator[Path]:
    """A private staging folder, locked (``flock``) while its registration runs and removed after;
    one left by a process that died is removed by the next registration (:func:`sweep_staging`)."""
    sweep_staging(root)
    with tempfile.TemporaryDirectory(dir=root, prefix=_STAGING) as tmp, \
            open(Path(tmp) / _STAGING_LOCK, "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield Path(tmp)


def sweep_staging(root: Path) -> list[Path]:
    """Remove the staging folders no living registration holds (their process died); return them."""
    removed = []
    for folder in root.glob(f"{_STAGING}*"):
        try:
            with open(folder / _STAGING_LOCK, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a registration in progress
        except OSError:
            if time.time() - folder.lstat().st_mtime < 60:
                continue  # just made, its lock not yet taken
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _record(db: Session, settings: Settings, actor: User, name: str, description: str | None,
            visibility: VisibilityIn | None, stage: Callable[[Path], Staged]) -> tuple[WorkflowVersion, bool]:
    """Stage, validate and record a version. Returns the version and whether it is new.

    Nothing is left behind when validation or the database refuses: the staging folder is
    temporary and the final folder is removed if the commit fails.
    """
    root = store_root(settings)
    with _staging_folder(root) as tmp:
        staged = stage(Path(tmp) / "bundle")
        topology = validate_template(staged.path, check_inputs=False)
        _check_secrets_suppliable(topology)
        _check_credentials_bound(topology)
        workflow = db.scalar(select(Workflow).where(Workflow.name == name))
        if workflow is not None:
            if workflow.owner_id != actor.id and actor.role != Role.ADMIN:
                raise Conflict(f"workflow {name!r} belongs to someone else", hint="choose another name",
                               field="name")
            existing = db.scalar(select(WorkflowVersion).where(WorkflowVersion.workflow_id == workflow.id,
                                                               WorkflowVersion.digest == staged.digest))
            if existing is not None:
                return existing, False
        else:
            workflow = Workflow(name=name, owner_id=actor.id, description=description)
            if visibility is not None:
                _apply_visibility(workflow, visibility)
            db.add(workflow)
            db.flush()
        number = (db.scalar(select(func.max(WorkflowVersion.number))
                            .where(WorkflowVersion.workflow_id == workflow.id)) or 0) + 1
        info = describe(topology)
        version = WorkflowVersion(workflow_id=workflow.id, number=number, digest=staged.digest,
                                  source=staged.source, bundle="", entry=info["entry"],
                                  description=info["description"], inputs=info["inputs"],
                                  outputs=info["outputs"], workflows=info["workflows"], nodes=info["nodes"],
                                  registered_by=actor.id)
        db.add(version)
        db.flush()
        final_dir = root / workflow.id / version.id
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "bundle"), final_dir)
        version.bundle = str(final_dir / "workflow.csar") if staged.source["kind"] == "csar" else str(final_dir)
    _make_read_only(final_dir)
    try:
        db.commit()
    except IntegrityError as exc:  # a concurrent registration of the same content or name
        db.rollback()
        shutil.rmtree(final_dir, ignore_errors=True)
        raise Conflict(f"workflow {name!r} changed while registering; retry") from exc
    except BaseException:
        db.rollback()
        shutil.rmtree(final_dir, ignore_errors=True)
        raise
    log.info("registered workflow %s version %d (%s) by %s", name, version.number, version.digest,
             actor.username)
    return version, True


def _apply_visibility(workflow: Workflow, visibility: VisibilityIn) -> None:
    workflow.visibility = visibility.mode
    workflow.allowed_users = list(visibility.users)
    workflow.allowed_groups = list(visibility.groups)


def _registered(version: WorkflowVersion, created: bool) -> Registered:
    return Registered(workflow=_out(version.workflow), version=VersionOut.model_validate(version), created=created)


def register_source(db: Session, settings: Settings, actor: User, data: WorkflowRegister) -> Registered:
    """Register a workflow from a git repository or a folder."""
    version, created = _record(db, settings, actor, data.name, data.description, data.visibility,
                               lambda staging: stage_source(data, settings, staging))
    return _registered(version, created)


def register_csar(db: Session, settings: Settings, actor: User, name: str, upload: UploadFile,
                  description: str | None) -> Registered:
    """Register a workflow from an uploaded CSAR (zip)."""
    content = upload.file.read(settings.registry_max_bytes + 1)
    version, created = _record(db, settings, actor, name, description, None,
                               lambda staging: stage_csar(content, upload.filename or "upload.csar", settings,
                                                          staging))
    return _registered(version, created)


def _out(workflow: Workflow) -> WorkflowOut:
    out = WorkflowOut.model_validate(workflow)
    out.latest_version = workflow.versions[-1].number if workflow.versions else None
    return out


def can_see(workflow: Workflow, user: User) -> bool:
    """Visibility: public, or owner, admin, listed user or member of a listed group."""
    # Mirrored by runs._fast_execution through visible(): a rule goes there, not here.
    return visible(workflow.visibility, owner_id=workflow.owner_id, allowed_users=workflow.allowed_users,
                   allowed_groups=workflow.allowed_groups, user_id=user.id, username=user.username,
                   role=user.role, groups=user.groups)


def visible(visibility: Visibility, *, owner_id: str, allowed_users: Sequence[str] | None,
            allowed_groups: Sequence[str] | None, user_id: str, username: str, role: Role,
            groups: Sequence[str] | None) -> bool:
    """can_see on plain values (the invoke hot path reads them as one row, not as objects)."""
    if visibility == Visibility.PUBLIC or role == Role.ADMIN or owner_id == user_id:
        return True
    return username in (allowed_users or ()) or bool(set(groups or ()) & set(allowed_groups or ()))


_BY_ID_OR_NAME = select(Workflow).where(or_(Workflow.id == bindparam("ref"), Workflow.name == bindparam("ref")))


def get_visible(db: Session, user: User, ref: str) -> Workflow:
    """A workflow by id or name that the user may see (others are reported as absent)."""
    # One query for either; when a name equals another workflow's id, the id wins.
    found = db.scalars(_BY_ID_OR_NAME, {"ref": ref}).all()
    workflow = next((w for w in found if w.id == ref), found[0] if found else None)
    if workflow is None or not can_see(workflow, user):
        raise NotFound(f"workflow {ref!r} does not exist", hint="list workflows with 'waas workflows list'")
    return workflow


def list_visible(db: Session, user: User) -> list[WorkflowOut]:
    """The workflows the user may see."""
    return [_out(w) for w in db.scalars(select(Workflow).order_by(Workflow.name)).all() if can_see(w, user)]


def show(db: Session, user: User, ref: str) -> WorkflowDetail:
    """A workflow with its latest version."""
    workflow = get_visible(db, user, ref)
    latest = VersionOut.model_validate(workflow.versions[-1]) if workflow.versions else None
    return WorkflowDetail(**_out(workflow).model_dump(), latest=latest)


def versions(db: Session, user: User, ref: str) -> list[VersionOut]:
    return [VersionOut.model_validate(v) for v in get_visible(db, user, ref).versions]


def version(db: Session, user: User, ref: str, number: int) -> VersionOut:
    return VersionOut.model_validate(version_of(get_visible(db, user, ref), number))


def version_of(workflow: Workflow, number: int | None) -> WorkflowVersion:
    """A version by number (the latest when None)."""
    if not workflow.versions:
        raise NotFound(f"workflow {workflow.name!r} has no version")
    if number is None:
        return workflow.versions[-1]
    for version in workflow.versions:
        if version.number == number:
            return version
    raise NotFound(f"workflow {workflow.name!r} has no version {number}",
                   hint=f"versions are 1 to {workflow.versions[-1].number}")


def update(db: Session, actor: User, ref: str, data: WorkflowUpdate) -> WorkflowOut:
    """Change description or visibility (owner or admin)."""
    workflow = get_visible(db, actor, ref)
    if workflow.owner_id != actor.id and actor.role != Role.ADMIN:
        raise PermissionDenied("only the workflow's owner or an admin may change it")
    if data.description is not None:
        workflow.description = data.description
    if data.visibility is not None:
        _apply_visibility(workflow, data.visibility)
    db.commit()
    return _out(workflow)
