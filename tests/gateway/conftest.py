"""Gateway fixtures: a real app on SQLite and on PostgreSQL, with the stack's real OpenBao."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from gateway.core.db import make_engine, make_session_factory, upgrade
from gateway.main import create_app
from gateway.persistence.models import Role
from gateway.schemas.users import TokenCreate, UserCreate
from gateway.services import users as user_service
from hpcwaas.settings import Settings
from hpcwaas.stack.info import StackInfo, VaultInfo


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 stack: StackInfo) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'gateway.db'}"
        upgrade(url)
        yield url
        return
    pg = stack.postgres
    if pg is None:
        pytest.fail("the stack has no PostgreSQL; run `make stack-up`", pytrace=False)
    name = f"hpcwaas_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg.sqlalchemy_url(name)
    upgrade(url)
    yield url
    with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def settings(database_url: str, vault_info: VaultInfo, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("home"),
        database_url=database_url,
        vault_addr=vault_info.addr,
        vault_token_file=vault_info.gateway_token_file,
        vault_mount=vault_info.mount,
        ssh_connect_timeout=5,
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@dataclass
class Person:
    """A user of the gateway in a test, with a client that sends their token."""

    username: str
    id: str
    role: Role
    token: str
    http: TestClient

    def _h(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.get(url, headers=self._h(kw.pop("headers", None)), **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.post(url, headers=self._h(kw.pop("headers", None)), **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.patch(url, headers=self._h(kw.pop("headers", None)), **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.delete(url, headers=self._h(kw.pop("headers", None)), **kw)


@pytest.fixture(scope="session")
def people(settings: Settings, client: TestClient) -> dict[str, Person]:
    """An admin, two scientists and a developer, made through the service layer once per database."""
    engine = make_engine(settings.effective_database_url)
    sessions = make_session_factory(engine)
    out: dict[str, Person] = {}
    with sessions() as db:
        admin, token, _ = user_service.bootstrap_admin(db, "admin", 1)
        out["admin"] = Person(admin.username, admin.id, admin.role, token, client)
        for name, role in (("alice", Role.SCIENTIST), ("bob", Role.SCIENTIST), ("dave", Role.DEVELOPER)):
            user = user_service.create_user(db, UserCreate(username=name, role=role))
            _, tok = user_service.issue_token(db, user, TokenCreate(name="test"), 1)
            out[name] = Person(name, user.id, role, tok, client)
    engine.dispose()
    return out


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names in one test."""
    return uuid.uuid4().hex[:8]


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The error object of a response in the API's one error shape."""
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    err: dict[str, Any] = body["error"]
    return err


def registered_site(admin: Person, site_info: Any, name: str = "local") -> dict[str, Any]:
    """Register the stack's site once per database (reused when already there)."""
    got = admin.get(f"/sites/{name}")
    if got.status_code == 200:
        return dict(got.json())
    resp = admin.post(
        "/sites",
        json={
            "name": name,
            "login_host": site_info.host,
            "port": site_info.port,
            "partitions": site_info.partitions,
            "work_dir": "/home/{login}/hpcwaas",
            "host_key": site_info.host_key,
        },
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
