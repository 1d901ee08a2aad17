"""Pipelines (data-logistics DAGs) and their runs, as the gateway shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from gateway.schemas.common import Login, RequestModel


class PipelineOut(BaseModel):
    name: str
    description: str
    schedule: str | None = None
    paused: bool | None = None
    source_kinds: list[str]
    target_kinds: list[str]


class PipelineRunCreate(RequestModel):
    """Start a run. Every site is reached with one of your own SSH keys (checked before anything starts)."""

    ssh_key: str = Field(description="Id of your SSH key for the sites of this run.")
    login: Login | None = Field(default=None, description="The key's own site login; another account is refused.")
    source: str = Field(max_length=4096, description=(
        "https://host/path, http://host/path, file:<path in the pipelines' local storage>, "
        "sftp://<site>/<path in your work dir>, or dataset:<catalogue dataset id>"))
    target: str = Field(max_length=4096, description="sftp://<site>/<path in your work dir>, or file:<path>")
    sha256: str | None = Field(default=None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$",
                               description="Expected checksum of a single-file source.")
    overwrite: bool = False
    target_ssh_key: str | None = Field(default=None, description="Another of your keys for the target site.")
    target_login: Login | None = None
    label: str | None = Field(default=None, max_length=200)
    register_result: bool = Field(default=True, description="stage_out: register the result in the catalogue.")


class PipelineRunOut(BaseModel):
    id: str = Field(description="The Airflow run id.")
    pipeline: str
    state: str
    requested_by: str
    label: str | None = None
    source: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    dataset_id: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    tasks: list[dict[str, Any]] = []
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    registered_dataset: str | None = Field(default=None, description="stage_out: the catalogue entry created.")
    registration_error: str | None = None
    logs: list[str] | None = None
