"""Persistence: ORM models, repositories and Alembic migrations."""
