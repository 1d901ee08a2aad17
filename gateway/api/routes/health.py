"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from gateway.api.deps import SessionDep, VaultDep
from gateway.core.db import database_errors

router = APIRouter(tags=["health"])


@router.get("/health", summary="Readiness: the database and Vault answer")
def health(db: SessionDep, vault: VaultDep) -> dict[str, Any]:
    with database_errors():
        db.execute(text("SELECT 1"))
    vault.health()
    return {"status": "ok", "database": "ok", "vault": "ok"}
