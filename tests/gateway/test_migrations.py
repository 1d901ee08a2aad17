"""The Alembic history builds exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from gateway.core.db import upgrade
from hpcwaas.db import Base


def test_migrations_match_models(database_url: str) -> None:
    for module in ("gateway.persistence.models", "catalogue.models", "containers.models"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            pass
    upgrade(database_url)  # idempotent: a second upgrade is a no-op
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
