"""Users (admins manage them) and the caller's own profile."""

from __future__ import annotations

from fastapi import APIRouter, status

from gateway.api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from gateway.schemas.users import TokenCreate, TokenCreated, TokenOut, UserCreate, UserOut, UserUpdate
from gateway.services import users as service

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserOut, summary="Who am I")
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED, summary="Create a user (admin)")
def create(data: UserCreate, db: SessionDep, _: AdminUser) -> UserOut:
    return UserOut.model_validate(service.create_user(db, data))


@router.get("", response_model=list[UserOut], summary="List users (admin)")
def list_users(db: SessionDep, _: AdminUser) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in service.list_users(db)]


@router.get("/{user_id}", response_model=UserOut, summary="Show a user by id or name (admin)")
def show(user_id: str, db: SessionDep, _: AdminUser) -> UserOut:
    return UserOut.model_validate(service.get_user(db, user_id))


@router.patch("/{user_id}", response_model=UserOut, summary="Change role, details or disable (admin)")
def update(user_id: str, data: UserUpdate, db: SessionDep, admin: AdminUser) -> UserOut:
    return UserOut.model_validate(service.update_user(db, admin, user_id, data))


@router.post(
    "/{user_id}/tokens", response_model=TokenCreated, status_code=201, summary="Issue a token for a user (admin)"
)
def issue_for(user_id: str, data: TokenCreate, db: SessionDep, settings: SettingsDep, _: AdminUser) -> TokenCreated:
    record, token = service.issue_token(db, service.get_user(db, user_id), data, settings.token_ttl_days)
    return TokenCreated(**TokenOut.model_validate(record).model_dump(), token=token)


@router.get("/{user_id}/tokens", response_model=list[TokenOut], summary="List a user's tokens (admin)")
def tokens_of(user_id: str, db: SessionDep, _: AdminUser) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.list_tokens(db, service.get_user(db, user_id))]
