"""Ticketed image downloads: how image-transfer pipelines fetch a SIF without any token."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from gateway.api.deps import SettingsDep
from gateway.schemas.common import MAX_INT
from gateway.services import image_tickets

router = APIRouter(prefix="/images", tags=["images"])


@router.api_route("/{image_id}/ticketed", methods=["GET", "HEAD"], response_class=FileResponse,
                include_in_schema=False)
def ticketed(image_id: str, request: Request, settings: SettingsDep,
             expires: int = Query(..., ge=0, le=MAX_INT), sig: str = Query(..., max_length=128)) -> FileResponse:
    image_tickets.check(settings, image_id, expires, sig)
    return image_tickets.file_response(request.app.state.image_worker.store, image_id)
