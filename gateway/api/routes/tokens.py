"""The caller's own API tokens."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import CurrentUser, SessionDep, SettingsDep
from gateway.schemas.users import TokenCreate, TokenCreated, TokenOut
from gateway.services import users as service

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", response_model=TokenCreated, status_code=201, summary="Create a token (shown once)")
def create(data: TokenCreate, db: SessionDep, settings: SettingsDep, user: CurrentUser) -> TokenCreated:
    record, token = service.issue_token(db, user, data, settings.token_ttl_days)
    return TokenCreated(**TokenOut.model_validate(record).model_dump(), token=token)


@router.get("", response_model=list[TokenOut], summary="List your tokens")
def list_tokens(db: SessionDep, user: CurrentUser) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.list_tokens(db, user)]


@router.delete("/{token_id}", response_model=TokenOut, summary="Revoke a token (yours, or any as admin)")
def revoke(token_id: str, db: SessionDep, user: CurrentUser) -> TokenOut:
    return TokenOut.model_validate(service.revoke_token(db, user, token_id))
