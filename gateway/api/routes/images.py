"""Container images: build from a spec or Dockerfile, follow the build, list, inspect, download, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse

from containers.service import BuildWorker
from gateway.api.deps import CurrentUser, DeveloperUser, SessionDep
from gateway.schemas.common import MAX_INT
from gateway.schemas.images import BuilderOut, BuildOut, BuildRequest, ImageDetail, ImageOut
from gateway.services import images as service

router = APIRouter(prefix="/images", tags=["images"])


def _worker(request: Request) -> BuildWorker:
    worker: BuildWorker = request.app.state.image_worker
    return worker


WorkerDep = Annotated[BuildWorker, Depends(_worker)]


@router.get("/builder", response_model=BuilderOut, summary="Whether images can be built here, and if not, why")
def builder(worker: WorkerDep, _user: CurrentUser) -> BuilderOut:
    return service.builder_status(worker)


@router.post("/builds", response_model=BuildOut, status_code=202,
             summary="Request a build (returns at once; cached and joined requests included)")
def request_build(data: BuildRequest, db: SessionDep, worker: WorkerDep, user: DeveloperUser) -> BuildOut:
    return BuildOut.model_validate(service.request_build(db, worker, user, data))


@router.get("/builds", response_model=list[BuildOut], summary="Your builds (admins: `?all=true` for everyone's)")
def list_builds(db: SessionDep, user: CurrentUser, all: Annotated[bool, Query()] = False) -> list[BuildOut]:
    return [BuildOut.model_validate(b) for b in service.list_builds(db, user, all)]


@router.get("/builds/{build_id}", response_model=BuildOut, summary="A build's state")
def show_build(build_id: str, db: SessionDep, user: CurrentUser) -> BuildOut:
    return BuildOut.model_validate(service.get_build(db, user, build_id))


# The log is plain text, but refusals are the API's JSON error body: say so in the spec (FastAPI
# would otherwise document them under the route's text/plain).
_JSON_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


@router.get("/builds/{build_id}/logs", response_class=PlainTextResponse,
            summary="Build log from a byte offset (headers: X-Next-Offset, X-Build-State)",
            responses={401: {"description": "No token, or an unknown, expired or revoked one", **_JSON_ERROR},
                       404: {"description": "No such build of yours", **_JSON_ERROR},
                       422: {"description": "Invalid input; the message names the field", **_JSON_ERROR}})
def build_log(build_id: str, db: SessionDep, worker: WorkerDep, user: CurrentUser,
              offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0) -> PlainTextResponse:
    text, next_offset, build = service.build_log(db, worker, user, build_id, offset)
    return PlainTextResponse(text, headers={"X-Next-Offset": str(next_offset), "X-Build-State": build.state.value})


@router.get("", response_model=list[ImageOut], summary="Images you asked for (admins: all)")
def list_images(db: SessionDep, user: CurrentUser) -> list[ImageOut]:
    return service.list_images(db, user)


@router.get("/{image_id}", response_model=ImageDetail, summary="Inspect an image: labels, size, digest, definition")
def show_image(image_id: str, db: SessionDep, worker: WorkerDep, user: CurrentUser) -> ImageDetail:
    return service.show_image(db, worker, user, image_id)


@router.get("/{image_id}/download", response_class=FileResponse,
            summary="Download the SIF (HTTP Range supported, for resumable transfers)")
def download(image_id: str, db: SessionDep, worker: WorkerDep, user: CurrentUser) -> FileResponse:
    path, image = service.image_file(db, worker.store, user, image_id)
    return FileResponse(path, media_type="application/vnd.sylabs.sif", filename=f"{image.name or image.id}.sif",
                        headers={"X-Image-Digest": image.digest})


@router.delete("/{image_id}", status_code=204, summary="Delete an image (its owner or an admin)")
def delete(image_id: str, db: SessionDep, worker: WorkerDep, user: CurrentUser) -> Response:
    service.delete_image(db, worker.store, user, image_id)
    return Response(status_code=204)
