"""Users and API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import email_validator
from pydantic import ConfigDict, EmailStr, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from gateway.persistence.models import Role
from gateway.schemas.common import Name, ORMModel, RequestModel, Username

# A centre's internal mail domains (cluster.local, hpc.internal, lab.test) are real addresses
# here: email-validator's list of refused special-use names is emptied, as its docs allow.
email_validator.SPECIAL_USE_DOMAIN_NAMES.clear()


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


_LIFETIMES = ("expires_in_days", "expires_in", "expires_at")


class TokenCreate(RequestModel):
    """A new token's name and lifetime: in days, as a duration, or as an expiry time (one of them)."""

    # At most one lifetime: the schema says so (and that a lifetime is left out, not sent as null).
    model_config = ConfigDict(json_schema_extra={"not": {"anyOf": [
        {"required": [a, b]} for i, a in enumerate(_LIFETIMES) for b in _LIFETIMES[i + 1:]]}})

    name: Name = "default"
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | SkipJsonSchema[None] = Field(
        default=None, description="Defaults to the server's TTL.")
    expires_in: timedelta | SkipJsonSchema[None] = Field(
        default=None, description="A duration: ISO 8601 (`PT12H`, `P30D`) or seconds; from a minute to ten years.")
    expires_at: datetime | SkipJsonSchema[None] = Field(
        default=None, description="An expiry time with its time zone (`2027-01-31T18:00:00Z`), from a minute to "
                                  "ten years ahead.")

    @field_validator(*_LIFETIMES, mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("leave it out rather than send null")
        return value

    @model_validator(mode="after")
    def _one_lifetime(self) -> TokenCreate:
        given = [n for n in _LIFETIMES if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one lifetime, not {' and '.join(given)}")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (2027-01-31T18:00:00Z)")
        lifetime = self.lifetime()
        if lifetime is not None and not timedelta(minutes=1) <= lifetime <= timedelta(days=3650):
            raise ValueError("a token lives from a minute to ten years")
        return self

    def lifetime(self) -> timedelta | None:
        """How long the token lives from now, when the request says."""
        if self.expires_in_days is not None:
            return timedelta(days=self.expires_in_days)
        if self.expires_at is not None:
            return self.expires_at - datetime.now(UTC)
        return self.expires_in


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
