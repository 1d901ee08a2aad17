"""The catalogue's REST API under ``/catalogue``, as a router the host application mounts.

The host supplies three dependencies: a database session, the authenticated principal (which
must refuse anonymous callers with its own 401), and the optional principal (None for anonymous
callers, still refusing a bad token). It also maps the catalogue's errors to statuses; ``STATUS``
is the mapping the gateway uses.
"""

# No `from __future__ import annotations`: FastAPI must see the dependency aliases made inside
# make_router as objects, not as strings it would look up in the module's globals.

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from catalogue import dcat, listing, service
from catalogue import errors as err
from catalogue.schemas import (
    DatasetCreate,
    DatasetFilters,
    DatasetOut,
    DatasetPage,
    DatasetUpdate,
    ImportReport,
    Resolved,
    SearchFilters,
    StorageTargetCreate,
    StorageTargetOut,
    StorageTargetUpdate,
    VersionOut,
)
from catalogue.service import Principal

# Most specific first, as the gateway's table.
STATUS: list[tuple[type[err.CatalogueError], int]] = [
    (err.LoginRequired, 401),
    (err.NotAllowed, 403),
    (err.DatasetNotFound, 404),
    (err.StorageTargetNotFound, 404),
    (err.Conflict, 409),
    (err.Unresolvable, 409),
    (err.InvalidQuery, 422),
    (err.InvalidEntry, 422),
    (err.ImportRejected, 422),
]
JSONLD = "application/ld+json"
NDJSON = "application/x-ndjson"


def make_router(
    *,
    session: Callable[..., Any],
    current_principal: Callable[..., Any],
    optional_principal: Callable[..., Any],
) -> APIRouter:
    """The REST router; see the module docstring for the three dependencies."""
    Db = Annotated[Session, Depends(session)]
    Who = Annotated[Principal, Depends(current_principal)]
    Anyone = Annotated[Principal | None, Depends(optional_principal)]
    router = APIRouter(prefix="/catalogue", tags=["catalogue"])

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @router.get("/datasets", response_model=DatasetPage, summary="List datasets you may read, filtered and sorted")
    def list_datasets(filters: Annotated[DatasetFilters, Query()], db: Db, who: Anyone) -> DatasetPage:
        return listing.list_datasets(db, who, filters)

    @router.get("/search", response_model=DatasetPage, summary="Full-text search with highlighted matches")
    def search(filters: Annotated[SearchFilters, Query()], db: Db, who: Anyone) -> DatasetPage:
        return listing.list_datasets(db, who, filters)

    @router.post("/datasets", response_model=DatasetOut, status_code=201, summary="Register a dataset (you own it)")
    def create(data: DatasetCreate, db: Db, who: Who) -> Any:
        return service.to_out(service.create_dataset(db, who, data), who)

    @router.get("/datasets/{dataset_id}", response_model=DatasetOut, summary="Show a dataset")
    def show(dataset_id: str, db: Db, who: Anyone) -> Any:
        return service.to_out(service.get_dataset(db, who, dataset_id), who)

    @router.patch("/datasets/{dataset_id}", response_model=DatasetOut, summary="Change a dataset (owner or admin)")
    def update(dataset_id: str, data: DatasetUpdate, db: Db, who: Who) -> Any:
        return service.to_out(service.update_dataset(db, who, dataset_id, data), who)

    @router.delete("/datasets/{dataset_id}", status_code=204, summary="Delete a dataset (owner or admin)")
    def delete(dataset_id: str, db: Db, who: Who) -> Response:
        service.delete_dataset(db, who, dataset_id)
        return Response(status_code=204)

    @router.get("/datasets/{dataset_id}/history", response_model=list[VersionOut], summary="Who changed what, when")
    def history(dataset_id: str, db: Db, who: Anyone) -> list[VersionOut]:
        return [VersionOut.model_validate(v) for v in service.history(db, who, dataset_id)]

    @router.get("/datasets/{dataset_id}/resolve", response_model=Resolved,
                summary="Concrete location, checksum and size, for pipelines")
    def resolve(dataset_id: str, db: Db, who: Anyone) -> Resolved:
        return service.resolve(db, who, dataset_id)

    @router.get("/datasets/{dataset_id}/dcat", summary="A dataset as DCAT JSON-LD (schema.org terms too)",
                response_class=JSONResponse, responses={200: {"content": {JSONLD: {}}}})
    def dataset_dcat(dataset_id: str, request: Request, db: Db, who: Anyone) -> JSONResponse:
        document = dcat.dataset_document(service.get_dataset(db, who, dataset_id), base_url(request))
        return JSONResponse(document, media_type=JSONLD)

    @router.get("/dcat", summary="The catalogue (what you may read) as DCAT JSON-LD, streamed",
                response_class=StreamingResponse, responses={200: {"content": {JSONLD: {}}}})
    def catalogue_dcat(request: Request, db: Db, who: Anyone) -> StreamingResponse:
        pieces = dcat.iter_catalogue(listing.iter_visible(db, who), base_url(request))
        return StreamingResponse(pieces, media_type=JSONLD)

    @router.get("/export.jsonl", summary="Export what you may read as JSON lines (the import format)",
                response_class=StreamingResponse, responses={200: {"content": {NDJSON: {}}}})
    def export(db: Db, who: Anyone) -> StreamingResponse:
        def lines() -> Iterator[str]:
            import json

            for dataset in listing.iter_visible(db, who):
                yield json.dumps(service.record_of(dataset), ensure_ascii=False) + "\n"

        return StreamingResponse(lines(), media_type=NDJSON)

    @router.post("/import", response_model=ImportReport, summary="Import JSON lines: all lines or none")
    def import_lines(
        db: Db,
        who: Who,
        body: Annotated[bytes, Body(media_type=NDJSON, min_length=1,
                                    description="One dataset (JSON) per line, as exported")],
    ) -> ImportReport:
        return service.import_records(db, who, body.splitlines())

    @router.get("/storage-targets", response_model=list[StorageTargetOut], summary="List storage targets")
    def list_targets(db: Db, _who: Anyone) -> list[StorageTargetOut]:
        return [StorageTargetOut.model_validate(t) for t in service.list_targets(db)]

    @router.post("/storage-targets", response_model=StorageTargetOut, status_code=201,
                 summary="Register a storage target (you own it)")
    def create_target(data: StorageTargetCreate, db: Db, who: Who) -> StorageTargetOut:
        return StorageTargetOut.model_validate(service.create_target(db, who, data))

    @router.get("/storage-targets/{ref}", response_model=StorageTargetOut, summary="Show a storage target")
    def show_target(ref: str, db: Db, _who: Anyone) -> StorageTargetOut:
        return StorageTargetOut.model_validate(service.get_target(db, ref))

    @router.patch("/storage-targets/{ref}", response_model=StorageTargetOut,
                  summary="Change a storage target (owner or admin)")
    def update_target(ref: str, data: StorageTargetUpdate, db: Db, who: Who) -> StorageTargetOut:
        return StorageTargetOut.model_validate(service.update_target(db, who, ref, data))

    @router.delete("/storage-targets/{ref}", status_code=204, summary="Delete an unused storage target")
    def delete_target(ref: str, db: Db, who: Who) -> Response:
        service.delete_target(db, who, ref)
        return Response(status_code=204)

    _mark_optional_auth(router, optional_principal)
    return router


def _mark_optional_auth(router: APIRouter, optional_principal: Callable[..., Any]) -> None:
    """In the OpenAPI document, a route that takes an anonymous caller says its token is optional
    (``security: [{}, ...]``): the scheme alone would claim every call needs one."""
    for route in router.routes:
        if isinstance(route, APIRoute) and any(dep.call is optional_principal for dep in route.dependant.dependencies):
            route.openapi_extra = {**(route.openapi_extra or {}), "security": [{}]}  # joins the scheme
