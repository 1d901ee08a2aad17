"""Image builds and the image store, for the gateway: roles, ownership and error mapping over
:mod:`containers.service` (which knows nothing of users or HTTP).

Developers (and admins) build; everyone sees the builds and images they asked for; the owner
of an image (who first asked for it) and admins delete it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from containers import errors as ce
from containers import service
from containers.models import Image, ImageBuild
from containers.store import ImageStore, inputs_from_request
from gateway.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from gateway.persistence.models import Role, User
from gateway.schemas.images import BuilderOut, BuildRequest, ImageDetail, ImageOut
from gateway.services.users import require_role
from hpcwaas.settings import Settings


@contextmanager
def _mapped() -> Iterator[None]:
    """The image service's errors as the gateway's (whose HTTP statuses are set in one place)."""
    try:
        yield
    except ce.SpecError as exc:
        raise InvalidInput(exc.message, hint=exc.hint, problems=exc.problems or None) from exc
    except (ce.ImageNotFound, ce.BuildNotFound) as exc:
        raise NotFound(exc.message, hint=exc.hint) from exc
    except ce.ImageBusy as exc:
        raise Conflict(exc.message, hint=exc.hint) from exc
    except ce.NotAllowed as exc:
        raise PermissionDenied(exc.message, hint=exc.hint) from exc


def start_worker(settings: Settings, sessions: sessionmaker[Session]) -> service.BuildWorker:
    """The gateway's build worker (started with the app, stopped with it)."""
    store, builder = service.store_and_builder(settings)
    return service.BuildWorker(sessions, store, builder, workers=settings.image_build_workers,
                               lease_seconds=settings.image_build_lease_seconds).start()


def builder_status(worker: service.BuildWorker) -> BuilderOut:
    return BuilderOut.model_validate(worker.builder.status().public())


def request_build(db: Session, worker: service.BuildWorker, user: User, data: BuildRequest) -> ImageBuild:
    require_role(user, Role.DEVELOPER)
    with _mapped():
        inputs = inputs_from_request(data.spec, data.dockerfile, data.files, data.executable)
        build = service.request_build(db, owner_id=user.id, inputs=inputs, store=worker.store,
                                      builder=worker.builder, force=data.force)
    worker.wake()
    return build


def get_build(db: Session, user: User, build_id: str) -> ImageBuild:
    with _mapped():
        build = service.get_build(db, build_id)
    if user.role != Role.ADMIN and build.owner_id != user.id:
        raise NotFound(f"no image build {build_id}")
    return build


def list_builds(db: Session, user: User, everyone: bool) -> Sequence[ImageBuild]:
    if everyone:
        require_role(user, Role.ADMIN)
    return service.list_builds(db, None if everyone else user.id)


def build_log(db: Session, worker: service.BuildWorker, user: User, build_id: str, offset: int) -> tuple[str, int,
                                                                                                           ImageBuild]:
    build = get_build(db, user, build_id)
    text, next_offset = service.build_log(worker.store, build, offset)
    return text, next_offset, build


def list_images(db: Session, user: User) -> list[ImageOut]:
    images = service.list_images(db, None if user.role == Role.ADMIN else user.id)
    return [ImageOut.model_validate(i) for i in images]


def get_image(db: Session, user: User, image_id: str) -> Image:
    with _mapped():
        image = service.get_image(db, image_id)
    if user.role != Role.ADMIN and not service.may_see(db, image, user.id):
        raise NotFound(f"no image {image_id}")
    return image


def show_image(db: Session, worker: service.BuildWorker, user: User, image_id: str) -> ImageDetail:
    image = get_image(db, user, image_id)
    with _mapped():
        meta = worker.store.inspect(image.id)
    return ImageDetail(**ImageOut.model_validate(image).model_dump(), definition=meta.definition,
                       download=f"/images/{image.id}/download")


def image_file(db: Session, store: ImageStore, user: User, image_id: str) -> tuple[Path, Image]:
    image = get_image(db, user, image_id)
    path = store.sif(image.id)
    if not path.exists():
        raise NotFound(f"image {image_id} is listed but its file is gone from the store",
                       hint="delete it and build it again")
    return path, image


def delete_image(db: Session, store: ImageStore, user: User, image_id: str) -> None:
    image = get_image(db, user, image_id)
    if user.role != Role.ADMIN and image.owner_id != user.id:
        raise PermissionDenied("only the image's owner or an admin may delete it")
    with _mapped():
        service.delete_image(db, store, image)
