"""FastAPI dependencies: settings, database session, Vault, the authenticated user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gateway.core.config import Settings
from gateway.errors import NotAuthenticated
from gateway.persistence.models import Role, User
from gateway.persistence.writer import GroupCommitWriter
from gateway.services import users as user_service
from hpcwaas.vault import Vault

P = ParamSpec("P")
T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="An API token: 'Authorization: Bearer hpcw_...'")


# Dependencies that only read app state are ``async def``: a plain ``def`` costs a thread-pool hop.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


async def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


async def get_writer(request: Request) -> GroupCommitWriter:
    writer: GroupCommitWriter = request.app.state.writer
    return writer


SettingsDep = Annotated[Settings, Depends(get_settings)]
Writer = Annotated[GroupCommitWriter, Depends(get_writer)]
SessionDep = Annotated[Session, Depends(get_db)]
VaultDep = Annotated[Vault, Depends(get_vault)]


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token sent, or NotAuthenticated (401) when none was."""
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("no API token given", hint="send 'Authorization: Bearer <token>'")
    return credentials.credentials


def current_user(
    db: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    return user_service.authenticate(db, bearer_token(credentials))


CurrentUser = Annotated[User, Depends(current_user)]
BearerToken = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def as_user(request: Request, credentials: HTTPAuthorizationCredentials | None,
                  fn: Callable[Concatenate[Session, User, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Authenticate and call ``fn(db, user, ...)`` in one worker-thread hop, on one session.

    For the hot endpoints (``async def`` routes taking a ``BearerToken``): the session, user and
    sync-endpoint dependencies each cost a thread-pool hop, and response validation of a sync
    endpoint another, a third of the gateway's CPU per invocation (bench/invoke.py). ``fn`` must
    return what it needs loaded: the session is closed when the hop ends.
    """
    def call(db: Session) -> T:
        return fn(db, current_user(db, credentials), *args, **kwargs)

    return await in_session(request, call)


async def in_session(request: Request, fn: Callable[Concatenate[Session, P], T],
                     *args: P.args, **kwargs: P.kwargs) -> T:
    """Call ``fn(db, ...)`` on a fresh session in one worker-thread hop (closed when it returns)."""
    sessions = request.app.state.sessions

    def call() -> T:
        with sessions() as db:
            return fn(db, *args, **kwargs)

    return await run_in_threadpool(call)


def optional_user(
    db: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User | None:
    """The caller when a token is sent (checked as strictly as by current_user), None when none is."""
    if credentials is None or not credentials.credentials:
        return None
    return user_service.authenticate(db, credentials.credentials)


OptionalUser = Annotated[User | None, Depends(optional_user)]


def admin_user(user: CurrentUser) -> User:
    user_service.require_role(user, Role.ADMIN)
    return user


def developer_user(user: CurrentUser) -> User:
    user_service.require_role(user, Role.DEVELOPER)
    return user


AdminUser = Annotated[User, Depends(admin_user)]
DeveloperUser = Annotated[User, Depends(developer_user)]
