"""Claiming, renewing and releasing leased records (deployments, executions, mirrors)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from gateway.persistence.models import Deployment, Execution, Mirror, utcnow

Leasable = type[Deployment] | type[Execution] | type[Mirror]


def _claimable(model: Any, now: datetime) -> Any:
    return and_(
        model.wake_at.is_not(None),
        model.wake_at <= now,
        or_(model.lease_owner.is_(None), model.lease_expires_at < now),
    )


def claim(db: Session, model: Leasable, owner: str, lease: timedelta) -> str | None:
    """Take one due record; return its id, or None when nothing is due.

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on each
    other. SQLite (one writer at a time): a conditional UPDATE that only one worker can win.
    """
    now = utcnow()
    due = _claimable(model, now)
    if db.get_bind().dialect.name == "postgresql":
        row = db.execute(
            select(model.id).where(due).order_by(model.wake_at).limit(1).with_for_update(skip_locked=True)
        ).first()
        if row is None:
            db.rollback()
            return None
        db.execute(update(model).where(model.id == row[0]).values(lease_owner=owner, lease_expires_at=now + lease))
        db.commit()
        return str(row[0])
    candidates = db.scalars(select(model.id).where(due).order_by(model.wake_at).limit(5)).all()
    for record_id in candidates:
        result = db.execute(
            update(model).where(model.id == record_id, due).values(lease_owner=owner, lease_expires_at=now + lease)
        )
        db.commit()
        if getattr(result, "rowcount", 0) == 1:
            return str(record_id)
    return None


def renew(db: Session, model: Leasable, record_id: str, owner: str, lease: timedelta) -> bool:
    """Extend a lease we hold; False if it was taken over (then stop working on the record)."""
    result = db.execute(
        update(model)
        .where(model.id == record_id, model.lease_owner == owner)
        .values(lease_expires_at=utcnow() + lease)
    )
    db.commit()
    return getattr(result, "rowcount", 0) == 1


def release(db: Session, model: Leasable, record_id: str, owner: str, wake_at: datetime | None) -> None:
    """Give a record back, to be looked at again at ``wake_at`` (never, when None)."""
    db.execute(
        update(model)
        .where(model.id == record_id, model.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, wake_at=wake_at)
    )
    db.commit()
