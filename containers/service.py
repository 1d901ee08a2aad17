"""Image builds as use cases: request, join, run, resume; and :func:`ensure_image` for direct callers.

Two ways to get an image:

- :func:`ensure_image` (no database): ``ensure_image(Path("step/image.yaml"))`` returns the image
  id and the SIF's path, building only when the store does not have it yet. Concurrent callers
  (threads or processes sharing the store) wait for one build. This is what the deployer's
  TOSCA container-image node calls.
- build records (the gateway): :func:`request_build` persists a request and returns at once;
  a :class:`BuildWorker` claims queued builds with a lease, runs them, and persists every state
  change before it is visible. A request identical to a build in flight joins it; a build whose
  worker died (a gateway restart) is resumed from its saved inputs once its lease expires, or
  marked failed with the reason after ``MAX_ATTEMPTS``. Nothing stays ``running`` forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from containers.builder import Builder, BuilderStatus, kill_group
from containers.errors import BuilderUnavailable, BuildFailed, BuildNotFound, ImageBusy, ImageError, ImageNotFound
from containers.models import ACTIVE_STATES, MAX_ATTEMPTS, BuildState, Image, ImageBuild
from containers.store import BuildInputs, ImageMeta, ImageStore, inputs_from_step
from hpcwaas.db import utcnow
from hpcwaas.settings import Settings, get_settings

log = logging.getLogger(__name__)


# ---- direct use (no database) ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image in the store: its id, the SIF's path, and whether it had to be built now."""

    id: str
    path: Path
    built: bool


def store_and_builder(settings: Settings | None = None) -> tuple[ImageStore, Builder]:
    """The store and builder the settings describe."""
    settings = settings or get_settings()
    builder = Builder(settings.effective_builder_dir, mirror=settings.image_mirror,
                      timeout=settings.image_build_timeout)
    return ImageStore(settings.effective_images_dir), builder


def build_into_store(inputs: BuildInputs, image_id: str, *, store: ImageStore, builder: Builder, key: str,
                     log_file: Path, on_process: Callable[[int], None] | None = None) -> tuple[ImageMeta, bool]:
    """Build ``inputs`` as ``image_id`` unless the store has it; True when this call built it.

    Holds the store's lock for the id, so one build runs per id across threads and processes.
    """
    with store.lock(image_id):
        if store.has(image_id):
            return store.inspect(image_id), False
        rendered = inputs.render(builder.mirror)
        arch = inputs.spec.target.arch if inputs.spec is not None else builder.status().public()["arch"]
        sif = builder.build(rendered.definition, inputs.files, key=key, log_file=log_file, arch=str(arch),
                            on_process=on_process)
        meta = store.add(image_id, sif, definition=rendered.definition, name=inputs.name,
                         builder=builder.version())
        return meta, True


def ensure_image(spec_path: Path, step_dir: Path | None = None, *, settings: Settings | None = None) -> ImageRef:
    """The image for a step's ``image.yaml`` (or ``Dockerfile``), built only if not in the store.

    :param spec_path: the spec or Dockerfile of the step.
    :param step_dir: where the files the spec copies are (default: the spec's folder).
    :raises SpecError: the spec is invalid (the message names the field and line).
    :raises BuilderUnavailable: the image is not in the store and no builder is prepared.
    :raises BuildFailed: apptainer failed; the message holds the tool's errors.
    """
    store, builder = store_and_builder(settings)
    inputs = inputs_from_step(spec_path, step_dir)
    status = builder.status()
    if status.version is None:
        raise BuilderUnavailable(status.reason or "the builder is not available", hint=status.hint)
    image_id = inputs.image_id(builder.version())
    if store.has(image_id):
        return ImageRef(image_id, store.sif(image_id), False)
    key = f"direct-{uuid.uuid4().hex[:12]}"
    _, built = build_into_store(inputs, image_id, store=store, builder=builder, key=key,
                                log_file=store.root / "logs" / f"{key}.log")
    return ImageRef(image_id, store.sif(image_id), built)


# ---- build records --------------------------------------------------------------------------


def _record_image(db: Session, meta: ImageMeta, owner_id: str | None) -> Image:
    image = db.get(Image, meta.id)
    if image is None:
        image = Image(id=meta.id, name=meta.name, owner_id=owner_id, size=meta.size,
                      digest=f"sha256:{meta.sha256}", labels=meta.labels, builder=meta.builder)
        db.add(image)
    else:  # rebuilt (`force`): the file changed, the owner stays
        image.size, image.digest, image.labels = meta.size, f"sha256:{meta.sha256}", meta.labels
    return image


def request_build(db: Session, *, owner_id: str | None, inputs: BuildInputs, store: ImageStore, builder: Builder,
                  force: bool = False) -> ImageBuild:
    """Persist a build request and return it: ``succeeded`` + ``cached`` when the store has the
    image, joined to an identical build in flight, ``queued`` for a worker, or ``failed`` with
    the reason when no builder is available (a clear status, never a hang)."""
    status = builder.status()
    build = ImageBuild(owner_id=owner_id, name=inputs.name, kind=inputs.kind, state=BuildState.QUEUED)
    if status.version is None:
        build.state, build.finished_at = BuildState.FAILED, utcnow()
        build.message = f"{status.reason}; {status.hint}" if status.hint else status.reason
        db.add(build)
        db.commit()
        return build
    image_id = build.image_id = inputs.image_id(builder.version())
    if force and not any(b.state in ACTIVE_STATES for b in _builds_of(db, image_id)):
        store.delete(image_id)
    if store.has(image_id):
        meta = store.inspect(image_id, definition=False)
        _record_image(db, meta, owner_id)
        build.state, build.cached, build.finished_at = BuildState.SUCCEEDED, True, utcnow()
        build.message = "the image was already in the store: nothing to build"
        db.add(build)
        db.commit()
        return build
    if not status.available:
        build.state, build.finished_at = BuildState.FAILED, utcnow()
        build.message = f"{status.reason}; {status.hint}" if status.hint else status.reason
        db.add(build)
        db.commit()
        return build
    leader = db.scalars(
        select(ImageBuild).where(ImageBuild.image_id == image_id, ImageBuild.leader_id.is_(None),
                                 ImageBuild.state.in_(ACTIVE_STATES)).order_by(ImageBuild.created_at).limit(1)
    ).first()
    if leader is not None:
        build.leader_id = leader.id
        build.state = leader.state
        build.message = f"joined build {leader.id}, which builds the same image"
    elif not store.inputs_folder(image_id).exists():
        inputs.save(store.inputs_folder(image_id))
    db.add(build)
    db.commit()
    return build


def _builds_of(db: Session, image_id: str) -> Sequence[ImageBuild]:
    return db.scalars(select(ImageBuild).where(ImageBuild.image_id == image_id)).all()


def get_build(db: Session, build_id: str) -> ImageBuild:
    """A build, with a follower's state taken from the build it joined."""
    build = db.get(ImageBuild, build_id)
    if build is None:
        raise BuildNotFound(f"no image build {build_id}", build=build_id)
    if build.leader_id is not None and not build.terminal:
        leader = db.get(ImageBuild, build.leader_id)
        if leader is not None and leader.state != build.state:
            _follow(build, leader)
            db.commit()
    return build


def _follow(build: ImageBuild, leader: ImageBuild) -> None:
    build.state = leader.state
    if leader.terminal:
        build.finished_at = leader.finished_at or utcnow()
        build.message = leader.message


def list_builds(db: Session, owner_id: str | None = None, limit: int = 200) -> Sequence[ImageBuild]:
    """Newest first; ``owner_id`` None lists everyone's."""
    query = select(ImageBuild).order_by(ImageBuild.created_at.desc()).limit(limit)
    if owner_id is not None:
        query = query.where(ImageBuild.owner_id == owner_id)
    return db.scalars(query).all()


def build_log(store: ImageStore, build: ImageBuild, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
    """Log text from byte ``offset`` (the build it joined, for a follower) and the next offset."""
    path = store.log_file(build.leader_id or build.id)
    if not path.exists():
        if build.cached:
            return ("the image was already in the store: nothing was built\n" if offset == 0 else ""), max(offset, 1)
        return "", offset
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read(limit)
    return chunk.decode(errors="replace"), offset + len(chunk)


def list_images(db: Session, owner_id: str | None = None) -> Sequence[Image]:
    """Images newest first: all of them, or those ``owner_id`` owns or asked for."""
    query = select(Image).order_by(Image.created_at.desc())
    if owner_id is not None:
        asked = select(ImageBuild.image_id).where(ImageBuild.owner_id == owner_id)
        query = query.where(or_(Image.owner_id == owner_id, Image.id.in_(asked)))
    return db.scalars(query).all()


def get_image(db: Session, image_id: str) -> Image:
    ImageStore.check_id(image_id)
    image = db.get(Image, image_id)
    if image is None:
        raise ImageNotFound(f"no image {image_id}", image=image_id)
    return image


def may_see(db: Session, image: Image, user_id: str) -> bool:
    """The owner, and everyone who asked for the image, may see and download it."""
    if image.owner_id == user_id:
        return True
    asked = db.scalars(select(ImageBuild.id).where(ImageBuild.image_id == image.id,
                                                   ImageBuild.owner_id == user_id).limit(1)).first()
    return asked is not None


def delete_image(db: Session, store: ImageStore, image: Image) -> None:
    """Remove an image from the store and the database (refused while a build of it runs)."""
    if any(b.state in ACTIVE_STATES for b in _builds_of(db, image.id)):
        raise ImageBusy(f"image {image.id} is being built; delete it once the build has ended", image=image.id)
    store.delete(image.id)
    db.delete(image)
    db.commit()


# ---- the worker -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildWorker:
    """Claims queued (or abandoned) builds with a lease and runs them, ``workers`` at a time.

    The lease is a compare-and-swap ``UPDATE`` on the build row, so several gateway processes
    sharing the database (and the store's folder) never run the same build twice; a running
    build renews its lease, and a build whose lease expired is resumed by whoever claims it.
    """

    def __init__(self, sessions: sessionmaker[Session], store: ImageStore, builder: Builder, *,
                 workers: int = 1, lease_seconds: float = 60.0, poll_seconds: float = 2.0) -> None:
        self.sessions = sessions
        self.store = store
        self.builder = builder
        self.workers = workers
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_seconds = poll_seconds
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # lifecycle
    def start(self) -> BuildWorker:
        try:
            self.recover()
        except Exception:  # the database is down: the gateway still starts and answers 503s
            log.exception("recovering image builds at start failed; claims will retry")
        for n in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"image-build-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop claiming; builds in flight keep their lease until it expires (then resume elsewhere)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout  # one budget for all threads: shutdown stays bounded
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> int:
        """Expire the leases of builds run by dead processes on this host, so they resume now."""
        expired = 0
        with self.sessions() as db:
            running = db.scalars(select(ImageBuild).where(ImageBuild.state == BuildState.RUNNING)).all()
            for build in running:
                host, _, rest = (build.lease_owner or "").partition(":")
                pid = rest.partition(":")[0]
                if host == self.host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    build.lease_expires_at = utcnow() - timedelta(seconds=1)
                    expired += 1
            db.commit()
        return expired

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                build_id = self.claim()
            except Exception:  # the database is down: try again later
                log.exception("claiming an image build failed")
                build_id = None
            if build_id is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self.run(build_id)

    def claim(self) -> str | None:
        """Take one claimable build (queued, or running with an expired lease); its id or None."""
        now = utcnow()
        claimable = or_(
            ImageBuild.state == BuildState.QUEUED,
            and_(ImageBuild.state == BuildState.RUNNING, ImageBuild.lease_expires_at < now),
        )
        with self.sessions() as db:
            rows = db.execute(
                select(ImageBuild.id, ImageBuild.image_id).where(ImageBuild.leader_id.is_(None), claimable)
                .order_by(ImageBuild.created_at).limit(20)
            ).all()
            # Only builds whose saved inputs this worker can read: replicas share the store's folder,
            # and a process pointed at another store must not take (and fail) builds it cannot run.
            candidates = [b for b, image in rows if image and self.store.inputs_folder(image).exists()]
            for build_id in candidates[:5]:
                result = db.execute(
                    update(ImageBuild)
                    .where(ImageBuild.id == build_id, ImageBuild.leader_id.is_(None), claimable)
                    .values(state=BuildState.RUNNING, lease_owner=self.owner, lease_expires_at=now + self.lease,
                            attempts=ImageBuild.attempts + 1, started_at=now, updated_at=now)
                )
                db.commit()
                if getattr(result, "rowcount", 0) == 1:
                    return build_id
        return None

    def _heartbeat(self, build_id: str, done: threading.Event) -> None:
        while not done.wait(self.lease.total_seconds() / 3):
            with contextlib.suppress(Exception), self.sessions() as db:
                db.execute(update(ImageBuild).where(ImageBuild.id == build_id, ImageBuild.lease_owner == self.owner)
                           .values(lease_expires_at=utcnow() + self.lease))
                db.commit()

    def _set_pid(self, build_id: str, pid: int) -> None:
        with self.sessions() as db:
            db.execute(update(ImageBuild).where(ImageBuild.id == build_id).values(pid=pid))
            db.commit()

    def run(self, build_id: str) -> None:
        """Run a claimed build to a terminal state (every outcome is persisted)."""
        with self.sessions() as db:
            build = db.get(ImageBuild, build_id)
            if build is None or build.image_id is None:
                return
            image_id, attempts, old_pid, owner_id = build.image_id, build.attempts, build.pid, build.owner_id
        if old_pid is not None and _alive(old_pid):
            kill_group(old_pid)  # the process of an interrupted attempt on this host: stop it first
        if attempts > MAX_ATTEMPTS:
            self._finish(build_id, BuildState.FAILED,
                         f"the build was interrupted {attempts - 1} times (gateway restarts) and was given up; "
                         "request it again")
            return
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(build_id, done), daemon=True)
        beat.start()
        try:
            log_file = self.store.log_file(build_id)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            if attempts > 1:
                with log_file.open("a") as fh:
                    fh.write(f"# resumed after an interruption (attempt {attempts} of {MAX_ATTEMPTS})\n")
            try:
                inputs = BuildInputs.load(self.store.inputs_folder(image_id))
            except (OSError, ValueError) as exc:
                raise BuildFailed(f"the saved inputs of image {image_id} are missing or unreadable: {exc}") from exc
            meta, built = build_into_store(inputs, image_id, store=self.store, builder=self.builder,
                                           key=f"{build_id}-{attempts}", log_file=log_file,
                                           on_process=lambda pid: self._set_pid(build_id, pid))
            with self.sessions() as db:
                _record_image(db, meta, owner_id)
                db.commit()
            self._finish(build_id, BuildState.SUCCEEDED,
                         "built" if built else "the image was built meanwhile by an identical request",
                         cached=not built)
        except ImageError as exc:
            self._finish(build_id, BuildState.FAILED, exc.message)
        except Exception as exc:
            log.exception("image build %s failed unexpectedly", build_id)
            self._finish(build_id, BuildState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            done.set()

    def _finish(self, build_id: str, state: BuildState, message: str, cached: bool = False) -> None:
        """Persist the terminal state of a build and of every request that joined it."""
        with self.sessions() as db:
            build = db.get(ImageBuild, build_id)
            if build is None:
                return
            build.state, build.message, build.cached = state, message, cached
            build.finished_at, build.lease_owner, build.lease_expires_at = utcnow(), None, None
            for follower in db.scalars(select(ImageBuild).where(ImageBuild.leader_id == build_id)).all():
                _follow(follower, build)
            db.commit()


def builder_status(settings: Settings | None = None) -> BuilderStatus:
    """Whether builds can run with these settings, and if not, why."""
    return store_and_builder(settings)[1].status()
