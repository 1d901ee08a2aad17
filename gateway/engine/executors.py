"""Service executors the gateway registers with the deployer: data staging and image transfer as
Airflow DAG runs, image builds through the containers service.

All are suspendable: ``start`` does the one side effect (trigger a DAG run, request a build) with
an idempotency key derived from the operation's tag, remembers its id, and returns ``Waiting``;
``poll`` looks once; ``cancel`` stops it. Nothing is held between calls. They act for the user in
``request.context`` (the execution's or deployment's owner) with the SSH key of the operation's
host: the same ownership checks as the REST endpoints apply, before anything starts.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from data_logistics.client import RunStatus
from data_logistics.errors import PipelineNotFound
from deployer.errors import OperationError
from deployer.executors import (
    IMAGE_BUILD,
    IMAGE_TRANSFER,
    STAGE_IN,
    STAGE_OUT,
    ExecutorRegistry,
    OperationRequest,
    OperationResult,
    RunHooks,
    Waiting,
    registry,
)
from gateway.persistence.models import User
from gateway.schemas.pipelines import PipelineRunCreate
from gateway.services import pipelines
from hpcwaas.errors import HpcwaasError
from hpcwaas.settings import Settings
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


def _fail(request: OperationRequest, message: str, **ctx: Any) -> OperationError:
    return OperationError(message, node=request.node, interface=request.op.interface, operation=request.op.name,
                          **ctx)


def _inside(base: str, relative: str, request: OperationRequest, field: str) -> str:
    """An absolute path for ``relative`` under ``base``; refuses escapes."""
    if not relative or (relative.startswith("/") and not relative.startswith(base.rstrip("/") + "/")):
        raise _fail(request, f"{field} must be a path inside the work dir {base}, got {relative!r}")
    joined = posixpath.normpath(posixpath.join(base, relative))
    if joined != base.rstrip("/") and not joined.startswith(base.rstrip("/") + "/"):
        raise _fail(request, f"{field} {relative!r} leaves the work dir {base}")
    return joined


def dag_run_id(request: OperationRequest) -> str:
    """A DAG run id derived from the operation's stable tag: a retried start finds its run."""
    return "hpcwaas__op_" + hashlib.sha256(request.tag.encode()).hexdigest()[:32]


class PipelineExecutor:
    """Common start/poll/cancel of a DAG run on behalf of the run's user."""

    needs_file = False
    pipeline = ""
    internal_source = False  # the image transfer's source is the gateway's own ticket URL

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, vault: Vault) -> None:
        self.sessions, self.settings, self.vault = sessions, settings, vault

    # what subclasses say
    def request_for(self, request: OperationRequest) -> PipelineRunCreate:
        raise NotImplementedError

    def result(self, request: OperationRequest, status: RunStatus, user: User, db: Session) -> OperationResult:
        raise NotImplementedError

    # the protocol
    def _user(self, db: Session, request: OperationRequest) -> User:
        user = db.get(User, str(request.context.get("user_id")))
        if user is None:
            raise _fail(request, "the user this run acts for no longer exists")
        return user

    def _key_and_login(self, request: OperationRequest) -> tuple[str, str]:
        host = request.host
        if host.local or not host.credential or not host.username or not request.context.get("site"):
            raise _fail(request, f"{self.pipeline} needs a node hosted on the HPCSite of a gateway deployment")
        if request.credentials is None or request.credentials.acting_user != request.context.get("user_id"):
            raise _fail(request, f"{self.pipeline} needs the credential resolver of the user the run acts for")
        try:
            key_id = request.credentials.key_id(host.credential)
        except HpcwaasError as exc:
            raise _fail(request, exc.message, hint=exc.hint) from exc
        return key_id, host.username

    def start(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        run_id = str(request.memo.get("dag_run_id") or dag_run_id(request))
        client = pipelines.airflow(self.settings)
        try:
            client.get_run(self.pipeline, run_id)
            hooks.log(f"{self.pipeline} run {run_id} already started")
        except PipelineNotFound:
            data = self.request_for(request)
            try:
                with self.sessions() as db:
                    pipelines.start_run(db, self.vault, self.settings, self._user(db, request), self.pipeline, data,
                                        run_id=run_id, internal_source=self.internal_source,
                                        on_behalf=request.context.get("run_label"))
            except HpcwaasError as exc:
                if isinstance(exc, OperationError):
                    raise
                raise _fail(request, f"{self.pipeline} could not start: {exc.message}", hint=exc.hint) from exc
            hooks.log(f"{self.pipeline} run {run_id} started")
        hooks.remember({"dag_run_id": run_id})
        return Waiting(after=POLL_SECONDS, memo={"dag_run_id": run_id}, attributes={"pipeline_run_id": run_id},
                       message="queued")

    def poll(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        run_id = str(request.memo.get("dag_run_id") or dag_run_id(request))
        status = pipelines.airflow(self.settings).status(self.pipeline, run_id)
        if not status.finished:
            progress = status.progress or {}
            done = progress.get("bytes_done") or progress.get("bytes")
            message = status.state + (f", {done} bytes" if done else "")
            return Waiting(after=POLL_SECONDS, message=message)
        if status.state != "success":
            raise _fail(request, f"{self.pipeline} run {run_id} failed: {status.error or 'see its log'}",
                        pipeline_run_id=run_id)
        with self.sessions() as db:
            return self.result(request, status, self._user(db, request), db)

    def cancel(self, request: OperationRequest, hooks: RunHooks) -> None:
        run_id = str(request.memo.get("dag_run_id") or dag_run_id(request))
        try:
            with self.sessions() as db:
                pipelines.cancel_run(self.settings, self._user(db, request), self.pipeline, run_id)
            hooks.log(f"{self.pipeline} run {run_id} cancelled")
        except HpcwaasError as exc:
            if "no " in exc.message and "run" in exc.message:  # never started: nothing to cancel
                return
            raise


class StageInExecutor(PipelineExecutor):
    """A catalogue dataset (or a URL) to a path in the run's work dir on the site."""

    pipeline = "stage_in"

    def request_for(self, request: OperationRequest) -> PipelineRunCreate:
        key_id, login = self._key_and_login(request)
        source = str(request.inputs.get("dataset") or request.inputs.get("source") or "")
        if not source:
            raise _fail(request, "stage-in needs a dataset (a catalogue id) or a source URL")
        if "://" not in source and not source.startswith(("dataset:", "file:")):
            source = f"dataset:{source}"
        base = request.host.work_dir or ""
        target = _inside(base, str(request.inputs.get("path") or ""), request, "path")
        return PipelineRunCreate(ssh_key=key_id, login=login, source=source,
                                 target=f"sftp://{request.context['site']}/{target}",
                                 overwrite=bool(request.inputs.get("overwrite", False)),
                                 label=f"{request.step or request.node} of {request.deployment_id}")

    def result(self, request: OperationRequest, status: RunStatus, user: User, db: Session) -> OperationResult:
        res = status.result if isinstance(status.result, dict) else {}
        path = (res.get("target") or {}).get("path")
        attrs = {"pipeline_run_id": status.run_id, "site_path": path, "sha256": res.get("sha256"),
                 "size": res.get("size"), "source_dataset": res.get("dataset_id")}
        return OperationResult(attributes=attrs, outputs=attrs)


class StageOutExecutor(PipelineExecutor):
    """A path in the run's work dir to the pipelines' storage, registered in the catalogue."""

    pipeline = "stage_out"

    def request_for(self, request: OperationRequest) -> PipelineRunCreate:
        key_id, login = self._key_and_login(request)
        base = request.host.work_dir or ""
        source = _inside(base, str(request.inputs.get("path") or ""), request, "path")
        name = str(request.inputs.get("dataset_name") or posixpath.basename(source))
        target = f"file:results/{request.deployment_id}/{posixpath.basename(source)}"
        return PipelineRunCreate(ssh_key=key_id, login=login, source=f"sftp://{request.context['site']}/{source}",
                                 target=target, overwrite=True, label=name[:200],
                                 register_result=bool(request.inputs.get("register", True)))

    def result(self, request: OperationRequest, status: RunStatus, user: User, db: Session) -> OperationResult:
        res = status.result if isinstance(status.result, dict) else {}
        dataset_id, error = (None, None)
        if request.inputs.get("register", True):
            about = {k: request.context[k] for k in ("execution_id", "deployment_id") if request.context.get(k)}
            dataset_id, error = pipelines.register_result(db, user, status.run_id, res, about=about)
            if dataset_id is None:
                raise _fail(request, f"the result was copied but not registered in the catalogue: {error}")
        attrs = {"pipeline_run_id": status.run_id, "dataset_id": dataset_id,
                 "location": pipelines.result_location(res) if res.get("target") else None,
                 "sha256": res.get("sha256"), "size": res.get("size"),
                 "site_path": (res.get("source") or {}).get("path")}
        return OperationResult(attributes=attrs, outputs=attrs)


class ImageBuildExecutor:
    """Builds (or finds cached) the node's image through the containers service."""

    needs_file = False

    def __init__(self, sessions: sessionmaker[Session], settings: Settings,
                 wake: Callable[[], None] = lambda: None) -> None:
        self.sessions, self.settings, self.wake = sessions, settings, wake

    def _inputs(self, request: OperationRequest) -> Any:
        from containers.store import inputs_from_request, inputs_from_step

        spec_file = request.artifacts.get("image_spec")
        try:
            if spec_file is not None:
                return inputs_from_step(spec_file)
            spec = request.inputs.get("spec")
            if isinstance(spec, dict) and spec:
                return inputs_from_request(spec, None, None)
        except HpcwaasError as exc:
            raise _fail(request, f"invalid image spec: {exc.message}", hint=exc.hint) from exc
        raise _fail(request, "a ContainerImage needs a spec property or an image_spec artifact (image.yaml)")

    def _answer(self, request: OperationRequest, build: Any) -> OperationResult | Waiting:
        from containers.models import BuildState

        if build.state == BuildState.SUCCEEDED:
            from containers.service import store_and_builder

            store, _ = store_and_builder(self.settings)
            meta = store.inspect(build.image_id, definition=False)
            attrs = {"image_file": build.image_id, "image_digest": f"sha256:{meta.sha256}", "image_build_id": build.id,
                     "cached": bool(build.cached)}
            return OperationResult(attributes=attrs, outputs=attrs)
        if build.state == BuildState.FAILED:
            raise _fail(request, f"image build {build.id} failed: {build.message}", image_build_id=build.id)
        return Waiting(after=POLL_SECONDS, memo={"image_build_id": build.id},
                       attributes={"image_build_id": build.id}, message=f"image build {build.state}")

    def start(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        from containers import service as containers

        build_id = request.memo.get("image_build_id")
        with self.sessions() as db:
            if build_id:
                return self._answer(request, containers.get_build(db, str(build_id)))
            store, builder = containers.store_and_builder(self.settings)
            build = containers.request_build(db, owner_id=str(request.context.get("user_id")),
                                             inputs=self._inputs(request), store=store, builder=builder)
            hooks.remember({"image_build_id": build.id})
            hooks.log(f"image build {build.id} for image {build.image_id}: {build.state}"
                      + (" (cached)" if build.cached else ""))
            self.wake()
            return self._answer(request, build)

    def poll(self, request: OperationRequest, hooks: RunHooks) -> OperationResult | Waiting:
        from containers import service as containers

        with self.sessions() as db:
            return self._answer(request, containers.get_build(db, str(request.memo["image_build_id"])))

    def cancel(self, request: OperationRequest, hooks: RunHooks) -> None:
        """Builds are shared and cached by content: an identical request may still want it."""


class ImageTransferExecutor(PipelineExecutor):
    """A built image to the site, as an ``image_transfer`` DAG run downloading it from the gateway."""

    pipeline = "image_transfer"
    internal_source = True

    def request_for(self, request: OperationRequest) -> PipelineRunCreate:
        from gateway.services import image_tickets

        key_id, login = self._key_and_login(request)
        image_id = str(request.inputs.get("image_file") or "")
        if not image_id:
            raise _fail(request, "no image to transfer: the ContainerImage has no image_file yet")
        base = request.host.work_dir or ""
        target = _inside(base, str(request.inputs.get("target_path") or ""), request, "target_path")
        url = image_tickets.ticket_url(self.settings, image_id)
        from containers.service import store_and_builder

        store, _ = store_and_builder(self.settings)
        digest = store.inspect(image_id, definition=False).sha256
        return PipelineRunCreate(ssh_key=key_id, login=login, source=url, sha256=digest,
                                 target=f"sftp://{request.context['site']}/{target}", overwrite=True,
                                 label=f"image {image_id[:12]} for {request.deployment_id}")

    def result(self, request: OperationRequest, status: RunStatus, user: User, db: Session) -> OperationResult:
        res = status.result if isinstance(status.result, dict) else {}
        attrs = {"pipeline_run_id": status.run_id, "image_file_path": (res.get("target") or {}).get("path"),
                 "sha256": res.get("sha256")}
        return OperationResult(attributes=attrs, outputs=attrs)


def register_all(sessions: sessionmaker[Session], settings: Settings, vault: Vault,
                 wake_image_worker: Callable[[], None] = lambda: None, target: ExecutorRegistry = registry) -> None:
    """Register the gateway's service executors (process-wide: the engine uses ``registry``)."""
    target.register(STAGE_IN, StageInExecutor(sessions, settings, vault))
    target.register(STAGE_OUT, StageOutExecutor(sessions, settings, vault))
    target.register(IMAGE_TRANSFER, ImageTransferExecutor(sessions, settings, vault))
    target.register(IMAGE_BUILD, ImageBuildExecutor(sessions, settings, wake_image_worker))
