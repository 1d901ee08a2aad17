"""The workflow registry: register (git, folder, CSAR), list, show, versions, visibility."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile

from gateway.api.deps import CurrentUser, DeveloperUser, SessionDep, SettingsDep
from gateway.schemas.common import MAX_INT
from gateway.schemas.workflows import (
    Registered,
    VersionOut,
    WorkflowDetail,
    WorkflowName,
    WorkflowOut,
    WorkflowRegister,
    WorkflowUpdate,
)
from gateway.services import workflows as service

router = APIRouter(prefix="/workflows", tags=["workflows"])


@router.post("", response_model=Registered, status_code=201, summary="Register a workflow from git or a folder")
def register(data: WorkflowRegister, response: Response, db: SessionDep, settings: SettingsDep,
             user: DeveloperUser) -> Registered:
    out = service.register_source(db, settings, user, data)
    response.status_code = 201 if out.created else 200
    return out


@router.post("/upload", response_model=Registered, status_code=201, summary="Register a workflow from a CSAR")
def upload(name: Annotated[WorkflowName, Form()], file: Annotated[UploadFile, File()], response: Response,
           db: SessionDep, settings: SettingsDep, user: DeveloperUser,
           description: Annotated[str | None, Form(max_length=4000)] = None) -> Registered:
    out = service.register_csar(db, settings, user, name, file, description)
    response.status_code = 201 if out.created else 200
    return out


@router.get("", response_model=list[WorkflowOut], summary="List the workflows you may see")
def list_workflows(db: SessionDep, user: CurrentUser) -> list[WorkflowOut]:
    return service.list_visible(db, user)


@router.get("/{ref}", response_model=WorkflowDetail, summary="Show a workflow and its latest version")
def show(ref: str, db: SessionDep, user: CurrentUser) -> WorkflowDetail:
    return service.show(db, user, ref)


@router.get("/{ref}/versions", response_model=list[VersionOut], summary="All versions of a workflow")
def versions(ref: str, db: SessionDep, user: CurrentUser) -> list[VersionOut]:
    return service.versions(db, user, ref)


@router.get("/{ref}/versions/{number}", response_model=VersionOut, summary="One version")
def version(ref: str, number: Annotated[int, Path(ge=1, le=MAX_INT)], db: SessionDep, user: CurrentUser) -> VersionOut:
    return service.version(db, user, ref, number)


@router.patch("/{ref}", response_model=WorkflowOut, summary="Change description or visibility (owner, admin)")
def update(ref: str, data: WorkflowUpdate, db: SessionDep, user: CurrentUser) -> WorkflowOut:
    return service.update(db, user, ref, data)
