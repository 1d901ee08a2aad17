"""Queries. Services call these; routes never hold SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from gateway.persistence.models import ApiToken, Role, Site, SSHKey, User

# Built once: every request authenticates, and building a statement (operators, coercions, its
# cache key) cost more CPU than running it (bench/invoke.py profile).
_TOKEN_BY_HASH = select(ApiToken).where(ApiToken.token_hash == bindparam("token_hash"))


def user_by_id(db: Session, user_id: str) -> User | None:
    return db.get(User, user_id)


def user_by_username(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == username))


def list_users(db: Session) -> Sequence[User]:
    return db.scalars(select(User).order_by(User.username)).all()


def count_admins(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User).where(User.role == Role.ADMIN)) or 0


def first_admin(db: Session) -> User | None:
    return db.scalar(select(User).where(User.role == Role.ADMIN).order_by(User.created_at).limit(1))


def token_by_hash(db: Session, token_hash: str) -> ApiToken | None:
    return db.scalar(_TOKEN_BY_HASH, {"token_hash": token_hash})


def token_by_id(db: Session, token_id: str) -> ApiToken | None:
    return db.get(ApiToken, token_id)


def tokens_of(db: Session, user_id: str) -> Sequence[ApiToken]:
    return db.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at)).all()


def site_by_name(db: Session, name: str) -> Site | None:
    return db.scalar(select(Site).where(Site.name == name))


def list_sites(db: Session) -> Sequence[Site]:
    return db.scalars(select(Site).order_by(Site.name)).all()


def ssh_key_by_id(db: Session, key_id: str) -> SSHKey | None:
    return db.get(SSHKey, key_id)


def ssh_keys_of(db: Session, user_id: str) -> Sequence[SSHKey]:
    return db.scalars(select(SSHKey).where(SSHKey.user_id == user_id).order_by(SSHKey.created_at)).all()


def ssh_key_by_name(db: Session, user_id: str, name: str) -> SSHKey | None:
    return db.scalar(select(SSHKey).where(SSHKey.user_id == user_id, SSHKey.name == name))
