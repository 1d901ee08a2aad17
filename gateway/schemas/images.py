"""Request and response bodies of the ``/images`` endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from gateway.schemas.common import ORMModel, RequestModel


class BuildRequest(RequestModel):
    """A spec (the content of ``image.yaml`` as an object) or a Dockerfile, and the step files."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["spec"]}, {"required": ["dockerfile"]}]})

    # Exactly one of the two is given (a null is not a way to leave one out: the schema says so).
    spec: dict[str, Any] | SkipJsonSchema[None] = Field(default=None,
                                                         description="The image spec (see docs/containers.md).")
    dockerfile: str | SkipJsonSchema[None] = Field(default=None, max_length=256 * 1024,
                                                   description="A Dockerfile instead.")
    files: dict[str, str] = Field(default_factory=dict, description="Step files: relative path -> base64 content.")
    executable: list[str] = Field(default_factory=list, description="Which of `files` are executable.")
    force: bool = Field(default=False, description="Rebuild even if the image is in the store.")

    @field_validator("spec", "dockerfile", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave it out rather than send null")
        return value


class BuildOut(ORMModel):
    id: str
    image_id: str | None
    name: str | None
    kind: str
    owner_id: str | None
    state: str = Field(description="queued, running, succeeded or failed")
    terminal: bool
    cached: bool = Field(description="The image was already in the store: nothing was built.")
    leader_id: str | None = Field(description="The identical build this request joined, if any.")
    message: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ImageOut(ORMModel):
    id: str
    name: str | None
    owner_id: str | None
    size: int
    digest: str
    labels: dict[str, Any]
    builder: str
    created_at: datetime


class ImageDetail(ImageOut):
    definition: str = Field(description="The Singularity definition the image was built from.")
    download: str = Field(description="Where to download the SIF (supports HTTP Range).")


class BuilderOut(BaseModel):
    available: bool
    version: str | None
    reason: str | None
    hint: str | None
    arch: str
