"""The one place where errors become HTTP responses, all with the same body shape.

Internal errors are logged with their traceback and answered with a generic 500 that carries
the request id, never the traceback itself.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalogue import api as catalogue_api
from data_logistics import errors as dl
from deployer import errors as deployer_errors
from gateway import errors as gw
from hpcwaas import errors as common

log = logging.getLogger(__name__)

# Most specific first: the first matching class decides the status. The catalogue keeps its
# own table (it shares no classes with the others) and joins this one here.
STATUS: list[tuple[type[common.HpcwaasError], int]] = [
    *catalogue_api.STATUS,
    (gw.NotAuthenticated, 401),
    (gw.TooManyAttempts, 429),
    (gw.QuotaExceeded, 429),
    (gw.PermissionDenied, 403),
    (gw.NotFound, 404),
    (dl.PipelineNotFound, 404),
    (dl.DestinationExists, 409),
    (dl.InvalidTransfer, 422),
    (dl.DatasetUnresolved, 422),
    (dl.CredentialUnavailable, 422),
    (dl.AirflowUnavailable, 503),
    (dl.AirflowError, 502),
    (dl.StagingError, 502),
    (common.SecretNotFound, 404),
    (gw.Conflict, 409),
    (common.HostKeyMismatch, 409),
    (gw.InvalidInput, 422),
    (common.InvalidKey, 422),
    (common.AuthenticationFailed, 422),
    (common.SchedulerError, 422),
    (deployer_errors.TemplateError, 422),
    (deployer_errors.InputError, 422),
    (common.RemoteCommandFailed, 502),
    (gw.DatabaseUnavailable, 503),
    (common.VaultUnavailable, 503),
    (common.SiteUnreachable, 503),
    (common.SSHError, 502),
    (common.VaultError, 502),
]


def status_for(exc: common.HpcwaasError) -> int:
    """The HTTP status of an hpcwaas error."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(
    request: Request, status: int, code: str, message: str, hint: str | None = None, details: Any = None
) -> JSONResponse:
    """A response in the API's one error shape."""
    body: dict[str, Any] = {"code": code, "message": message}
    if hint:
        body["hint"] = hint
    if details:
        body["details"] = details
    body["request_id"] = getattr(request.state, "request_id", None)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 429 and isinstance(details, dict) and "retry_after" in details:
        headers = {"Retry-After": str(details["retry_after"])}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _safe_context(context: dict[str, Any]) -> dict[str, Any]:
    # Context is built by our own code from non-secret values; stderr can be long.
    return {k: (v[-4000:] if isinstance(v, str) else v) for k, v in context.items()}


def install(app: FastAPI) -> None:
    """Register the exception handlers on the app."""

    @app.exception_handler(common.HpcwaasError)
    async def _hpcwaas(request: Request, exc: common.HpcwaasError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500 and status != 503:
            log.error("%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message)
        details = _safe_context(exc.context)
        if isinstance(exc, deployer_errors.TemplateError):
            # Every problem found, each with its file, line, node and field.
            details["issues"] = [
                {"message": i.message, "file": i.file, "line": i.line, "node": i.node, "field": i.field}
                for i in exc.issues
            ]
        return error_response(request, status, exc.code, exc.message, exc.hint, details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid request"}
        return error_response(
            request, 422, "validation_error", f"invalid {first['field']}: {first['message']}", details=problems
        )

    @app.exception_handler(ValidationError)
    async def _domain_validation(request: Request, exc: ValidationError) -> JSONResponse:
        # A model built inside a service (a job spec, say) refused a value that came from the user.
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "message": "invalid value"}
        return error_response(
            request, 422, "validation_error", f"invalid {first['field']}: {first['message']}", details=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return error_response(
            request, 503, "database_unavailable", "the database is unavailable", "retry shortly; operators: check it"
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return error_response(request, 503, "database_unavailable", "the database connection was lost")
        log.exception("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, "internal_error", "internal error; quote the request id to an operator")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, "internal_error", "internal error; quote the request id to an operator")
