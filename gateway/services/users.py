"""Users, roles and API tokens."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.core.security import display_prefix, hash_token, new_token
from gateway.errors import Conflict, NotAuthenticated, NotFound, PermissionDenied
from gateway.persistence import repositories as repo
from gateway.persistence.models import ApiToken, Role, User, utcnow
from gateway.schemas.users import TokenCreate, UserCreate, UserUpdate
from gateway.services import auth_failures

# Writing last_used_at on every request would turn every read into a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# Creating a token needs a valid one: a person without one asks an administrator, and an
# administrator without one asks the gateway's host.
NEW_TOKEN_HINT = ("ask an administrator of this gateway for a new token (`waas tokens create --user <you>`); an "
                  "administrator without a valid token gets one on the gateway's host with `waas admin bootstrap "
                  "--username <admin>`")


def create_user(db: Session, data: UserCreate) -> User:
    """Create a user; the username must be free."""
    if repo.user_by_username(db, data.username) is not None:
        raise Conflict(f"user {data.username!r} already exists", field="username")
    user = User(username=data.username, role=data.role, full_name=data.full_name, email=data.email)
    db.add(user)
    try:
        db.commit()
    except IntegrityError as exc:  # a concurrent request took the name
        db.rollback()
        raise Conflict(f"user {data.username!r} already exists", field="username") from exc
    return user


def get_user(db: Session, user_id: str) -> User:
    user = repo.user_by_id(db, user_id) or repo.user_by_username(db, user_id)
    if user is None:
        raise NotFound(f"user {user_id!r} does not exist")
    return user


def list_users(db: Session) -> Sequence[User]:
    return repo.list_users(db)


def update_user(db: Session, actor: User, user_id: str, data: UserUpdate) -> User:
    """Change a user's role, details or disabled flag (admins only, enforced by the route)."""
    user = get_user(db, user_id)
    changes = data.model_dump(exclude_unset=True)
    demotes_admin = user.role == Role.ADMIN and (
        changes.get("role", Role.ADMIN) != Role.ADMIN or changes.get("disabled") is True
    )
    if demotes_admin and repo.count_admins(db) <= 1:
        raise Conflict("this is the last admin: create another admin first")
    if user.id == actor.id and changes.get("disabled") is True:
        raise Conflict("you cannot disable yourself")
    for name, value in changes.items():
        setattr(user, name, value)
    db.commit()
    return user


def issue_token(db: Session, user: User, data: TokenCreate, default_ttl_days: int) -> tuple[ApiToken, str]:
    """Create a token for the user; returns the record and the token (shown once)."""
    token = new_token()
    record = ApiToken(
        user_id=user.id,
        name=data.name,
        prefix=display_prefix(token),
        token_hash=hash_token(token),
        expires_at=data.expires_at or utcnow() + (data.lifetime() or timedelta(days=default_ttl_days)),
    )
    db.add(record)
    db.commit()
    return record, token


def list_tokens(db: Session, user: User) -> Sequence[ApiToken]:
    return repo.tokens_of(db, user.id)


def revoke_token(db: Session, actor: User, token_id: str) -> ApiToken:
    """Revoke a token: its owner or an admin may."""
    record = repo.token_by_id(db, token_id)
    if record is None or (record.user_id != actor.id and actor.role != Role.ADMIN):
        raise NotFound(f"token {token_id!r} does not exist")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        db.commit()
    return record


def accepted_as_is(revoked_at: datetime | None, expires_at: datetime, last_used_at: datetime | None,
                   disabled: bool, now: datetime) -> bool:
    """Whether ``authenticate`` would accept this token and write nothing (for one-query fast paths:
    anything else takes ``authenticate`` itself, for its error message or its last_used_at write)."""
    return (revoked_at is None and expires_at > now and not disabled
            and last_used_at is not None and now - last_used_at <= _LAST_USED_RESOLUTION)


def authenticate(db: Session, token: str) -> User:
    """The user a bearer token belongs to; NotAuthenticated if unknown, expired or revoked."""
    # Mirrored by accepted_as_is (the one-query invoke path): a new check goes in both.
    auth_failures.check()
    record = repo.token_by_hash(db, hash_token(token))
    if record is None:
        auth_failures.failed()
        raise NotAuthenticated("the token is not valid", hint=NEW_TOKEN_HINT)
    now = utcnow()
    refused = ("the token was revoked" if record.revoked_at is not None else
               "the token has expired" if record.expires_at <= now else
               "the account is disabled" if record.user.disabled else None)
    if refused is not None:
        auth_failures.check(record.user_id)
        auth_failures.failed(record.user_id)
        raise NotAuthenticated(refused, hint="contact an administrator" if record.user.disabled else NEW_TOKEN_HINT)
    if record.last_used_at is None or now - record.last_used_at > _LAST_USED_RESOLUTION:
        record.last_used_at = now
    user = record.user
    # End the transaction either way: it gives the pooled connection back. FastAPI runs the
    # endpoint in another thread-pool hop; a request that kept its connection while waiting for
    # a thread, with every thread waiting for a connection, stalled until the pool timeout (30 s)
    # once more requests were in flight than the pool had connections.
    db.commit()
    return user


def require_role(user: User, *roles: Role) -> None:
    """Raise PermissionDenied unless the user has one of the roles (admins always pass)."""
    if user.role != Role.ADMIN and user.role not in roles:
        names = sorted({"admin", *(r.value for r in roles)})
        allowed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise PermissionDenied(f"this needs the role {allowed}; you are {user.role.value}")


def bootstrap_admin(db: Session, username: str, ttl_days: int) -> tuple[User, str, bool]:
    """Create the first admin if there is none, and issue it a fresh token.

    Returns the admin, the token, and whether the admin was created now. Running it again
    re-issues a token for the existing admin: whoever can run it already controls the database.
    """
    admin = repo.first_admin(db)
    created = False
    if admin is None:
        admin = create_user(db, UserCreate(username=username, role=Role.ADMIN))
        created = True
    _, token = issue_token(db, admin, TokenCreate(name="bootstrap"), ttl_days)
    return admin, token, created
