"""The data catalogue mounted in the gateway: its REST API and its HTML pages under /catalogue.

The catalogue package knows nothing of the gateway; here it gets the gateway's session, its
token authentication (as a ``Principal``) and a place in the one error-status table.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from catalogue import api as catalogue_api
from catalogue import web as catalogue_web
from catalogue.service import Principal
from gateway.api.deps import CurrentUser, OptionalUser, get_db
from gateway.persistence.models import Role, User
from gateway.services import users as user_service


def _principal_of(user: User) -> Principal:
    return Principal(user_id=user.id, username=user.username, is_admin=user.role == Role.ADMIN)


def current_principal(user: CurrentUser) -> Principal:
    return _principal_of(user)


def optional_principal(user: OptionalUser) -> Principal | None:
    return _principal_of(user) if user is not None else None


def authenticate(db: Session, token: str) -> Principal:
    return _principal_of(user_service.authenticate(db, token))


router = APIRouter()
router.include_router(catalogue_api.make_router(
    session=get_db, current_principal=current_principal, optional_principal=optional_principal
))
router.include_router(catalogue_web.make_router(session=get_db, authenticate=authenticate))
