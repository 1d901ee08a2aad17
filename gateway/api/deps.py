"""FastAPI dependencies: settings, database session, Vault, the authenticated user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from gateway.core.config import Settings
from gateway.errors import NotAuthenticated
from gateway.persistence.models import Role, User
from gateway.services import users as user_service
from hpcwaas.vault import Vault

_bearer = HTTPBearer(auto_error=False, description="An API token: 'Authorization: Bearer hpcw_...'")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
VaultDep = Annotated[Vault, Depends(get_vault)]


def current_user(
    db: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("no API token given", hint="send 'Authorization: Bearer <token>'")
    return user_service.authenticate(db, credentials.credentials)


CurrentUser = Annotated[User, Depends(current_user)]


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
