"""Server-side commands: serve, database migrations, bootstrap of the first admin."""

from __future__ import annotations

import typer

from hpcwaas.cli._common import console, emit, errors, save_config
from hpcwaas.settings import get_settings

SHUTDOWN_GRACE_SECONDS = 5

app = typer.Typer(help="Run and administer the gateway (on the gateway's host).", no_args_is_help=True)


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default HPCWAAS_BIND_HOST, 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default HPCWAAS_BIND_PORT, 18000)."),
    migrate: bool = typer.Option(True, help="Upgrade the database schema first."),
) -> None:
    """Run the gateway (migrates the database first)."""
    import uvicorn

    from gateway.core.db import upgrade
    from gateway.main import create_app, freeze_startup_heap, private_files

    settings = get_settings()
    private_files(settings)
    with errors():
        if migrate:
            upgrade(settings.effective_database_url)
    gateway_app = create_app(settings)
    freeze_startup_heap()
    # On SIGTERM, requests still open after a few seconds (a log stream, a long poll) are closed:
    # the gateway stops within a bounded time whatever its clients do.
    uvicorn.run(gateway_app, host=host or settings.bind_host, port=port or settings.bind_port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)


@app.command("db-upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest version."""
    from gateway.core.db import redacted, upgrade

    url = get_settings().effective_database_url
    with errors():
        upgrade(url)
    console.print(f"database {redacted(url)} is up to date")


@app.command()
def bootstrap(
    username: str = typer.Option("admin", help="Name of the first admin, if none exists yet."),
    save: bool = typer.Option(False, help="Save the token in the CLI config."),
    ttl_days: int = typer.Option(30, help="Lifetime of the token."),
) -> None:
    """Create the first admin (if there is none) and print a fresh token for it, once."""
    from pydantic import TypeAdapter, ValidationError

    from gateway.core.db import make_engine, make_session_factory, upgrade
    from gateway.schemas.common import Username
    from gateway.services.users import bootstrap_admin

    settings = get_settings()
    try:
        TypeAdapter(Username).validate_python(username)
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"], param_hint="--username") from None
    with errors():
        upgrade(settings.effective_database_url)
        engine = make_engine(settings.effective_database_url)
        with make_session_factory(engine)() as db:
            admin, token, created = bootstrap_admin(db, username, ttl_days)
        engine.dispose()
    if save:
        save_config({"token": token})
    emit(
        {"username": admin.username, "created": created, "token": token},
        lambda d: console.print(
            f"{'created' if d['created'] else 'existing'} admin [bold]{d['username']}[/bold]; token (shown once):\n"
            f"{d['token']}"
        ),
    )


@app.command()
def worker(threads: int = typer.Option(None, help="Records advanced at once (HPCWAAS_ENGINE_WORKERS).")) -> None:
    """Run engine workers without the HTTP server (several may share one PostgreSQL database)."""
    import signal
    import threading

    from gateway.core.db import make_engine, make_session_factory, upgrade
    from gateway.engine.executors import register_all
    from gateway.engine.worker import EngineWorker
    from gateway.main import private_files
    from gateway.services import images as image_service
    from hpcwaas.vault import Vault

    settings = get_settings()
    private_files(settings)
    with errors():
        upgrade(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    vault = Vault.from_settings(settings)
    images = image_service.start_worker(settings, sessions)
    register_all(sessions, settings, vault, images.wake)
    pool = EngineWorker(sessions, settings, vault, threads).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"engine worker {pool.owner} running with {pool.threads} threads; Ctrl-C stops it")
    stop.wait()
    pool.stop()
    images.stop()
    engine.dispose()
