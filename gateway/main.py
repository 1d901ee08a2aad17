"""The gateway application factory (``uvicorn gateway.main:app`` or ``waas admin serve``)."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from gateway.api import errors
from gateway.api.middleware import RequestContext
from gateway.api.query import refuse_unknown_query
from gateway.api.routes import (
    catalogue,
    deployments,
    executions,
    health,
    image_tickets,
    images,
    jobs,
    mirrors,
    pipelines,
    sites,
    ssh_keys,
    tokens,
    users,
    workflows,
)
from gateway.core.config import Settings, get_settings
from gateway.core.db import make_engine, make_session_factory, redacted
from gateway.persistence.writer import GroupCommitWriter
from gateway.services import auth_failures
from gateway.services import images as image_service
from hpcwaas import __version__
from hpcwaas.vault import Vault

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 * 1024 * 1024


def freeze_startup_heap() -> None:
    """Exempt everything allocated so far (modules, routes, models) from the cyclic collector.

    Call once in a serving process, just before serving: otherwise every full collection walks
    those objects again. bench/invoke.py, closed loop: 165-224 -> 263 accepts a second."""
    gc.collect()
    gc.freeze()


def private_files(settings: Settings) -> None:
    """Make what a gateway or worker process writes readable by its own user only (database,
    logs, registry, image store): call once at the start of a serving process."""
    os.umask(0o077)
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.home.chmod(0o700)
    database = settings.effective_database_url
    if database.startswith("sqlite:///"):
        path = Path(database.removeprefix("sqlite:///"))
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists():
                name.chmod(0o600)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The database schema must be current (``waas admin db-upgrade``; ``waas admin serve`` does it)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.effective_database_url)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        app.state.vault = Vault.from_settings(settings)
        app.state.writer = GroupCommitWriter(app.state.sessions).start()
        app.state.image_worker = image_service.start_worker(settings, app.state.sessions)
        app.state.engine_worker = None
        if settings.engine_in_gateway and settings.engine_workers > 0:
            from gateway.engine.executors import register_all
            from gateway.engine.worker import EngineWorker

            register_all(app.state.sessions, settings, app.state.vault, app.state.image_worker.wake)
            app.state.engine_worker = EngineWorker(app.state.sessions, settings, app.state.vault).start()
        log.info("gateway up: database %s, vault %s", redacted(settings.effective_database_url), settings.vault_addr)
        yield
        if app.state.engine_worker is not None:
            app.state.engine_worker.stop()
        app.state.image_worker.stop()
        app.state.writer.stop()
        engine.dispose()

    app = FastAPI(
        title="hpcwaas",
        version=__version__,
        summary="HPC Workflows as a Service: deploy HPC workflows once, invoke them over REST.",
        lifespan=lifespan,
        dependencies=[Depends(refuse_unknown_query)],
        # Every operation may answer these, in the one error body (gateway.api.errors maps them).
        responses={
            400: {"model": errors_model(), "description": "The body could not be read (not JSON, not UTF-8)"},
            401: {"model": errors_model(), "description": "No token, or an unknown, expired or revoked one"},
            403: {"model": errors_model(), "description": "Your role may not do this"},
            404: {"model": errors_model(), "description": "No such thing, or not yours to see"},
            409: {"model": errors_model(), "description": "It conflicts with the current state"},
            413: {"model": errors_model(), "description": "The request body is too large"},
            422: {"model": errors_model(), "description": "Invalid input; the message names the field"},
            429: {"model": errors_model(), "description": "Too many failed authentications, or over a quota"},
            502: {"model": errors_model(), "description": "A service behind the gateway failed"},
            503: {"model": errors_model(), "description": "A service behind the gateway is away; try again"},
        },
    )
    errors.install(app)

    app.add_middleware(RequestContext, max_body_bytes=MAX_BODY_BYTES, limiter=auth_failures.FailureLimiter(
        settings.auth_failures_limit, settings.auth_failures_window_seconds))

    # Routes are matched in order, one by one: the ones scientists call all the time come first.
    for module in (health, executions, workflows, deployments, pipelines, mirrors, catalogue, images, image_tickets,
                   jobs, ssh_keys, sites, users, tokens):
        app.include_router(module.router)
    return app


def errors_model() -> type:
    from gateway.schemas.common import ErrorBody

    return ErrorBody


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory gateway.main:app_from_env``."""
    return create_app()
