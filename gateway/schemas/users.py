"""Users and API tokens."""

from __future__ import annotations

from datetime import datetime

from pydantic import EmailStr, Field

from gateway.persistence.models import Role
from gateway.schemas.common import Name, ORMModel, RequestModel, Username


class UserCreate(RequestModel):
    username: Username
    role: Role = Role.SCIENTIST
    full_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None


class UserUpdate(RequestModel):
    role: Role | None = None
    full_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    disabled: bool | None = None


class UserOut(ORMModel):
    id: str
    username: str
    role: Role
    full_name: str | None
    email: str | None
    disabled: bool
    created_at: datetime


class TokenCreate(RequestModel):
    name: Name = "default"
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Defaults to the server's TTL.")


class TokenOut(ORMModel):
    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself. Shown once: it is stored only as a hash.")
