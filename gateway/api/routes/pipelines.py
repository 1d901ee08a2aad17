"""Data-logistics pipelines: list them, start runs with your own SSH key, follow and cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import CurrentUser, SessionDep, SettingsDep, VaultDep
from gateway.schemas.pipelines import PipelineOut, PipelineRunCreate, PipelineRunOut
from gateway.services import pipelines as service

router = APIRouter(prefix="/pipelines", tags=["pipelines"])


@router.get("", response_model=list[PipelineOut], summary="The pipelines and what they read and write")
def list_pipelines(settings: SettingsDep, _user: CurrentUser) -> list[PipelineOut]:
    return service.list_pipelines(settings)


@router.get("/runs", response_model=list[PipelineRunOut], summary="Your runs, newest first")
def list_runs(settings: SettingsDep, user: CurrentUser, pipeline: Annotated[str | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[PipelineRunOut]:
    return service.list_runs(settings, user, pipeline, limit)


@router.post("/{pipeline}/runs", response_model=PipelineRunOut, status_code=201, summary="Start a run")
def start(pipeline: str, data: PipelineRunCreate, db: SessionDep, vault: VaultDep, settings: SettingsDep,
          user: CurrentUser) -> PipelineRunOut:
    return service.start_run(db, vault, settings, user, pipeline, data)


@router.get("/{pipeline}/runs/{run_id}", response_model=PipelineRunOut,
            summary="A run: state, tasks, progress, result or error (and its log with ?logs=true)")
def show(pipeline: str, run_id: str, db: SessionDep, settings: SettingsDep, user: CurrentUser,
         logs: Annotated[bool, Query()] = False) -> PipelineRunOut:
    return service.get_run(db, settings, user, pipeline, run_id, logs)


@router.delete("/{pipeline}/runs/{run_id}", response_model=PipelineRunOut, summary="Cancel a run")
def cancel(pipeline: str, run_id: str, settings: SettingsDep, user: CurrentUser) -> PipelineRunOut:
    return service.cancel_run(settings, user, pipeline, run_id)
