"""Users, roles and API tokens through the REST API (SQLite and PostgreSQL, real OpenBao)."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from gateway.core.db import make_engine, make_session_factory
from gateway.core.security import hash_token
from gateway.persistence import repositories as repo
from gateway.persistence.models import utcnow
from hpcwaas.settings import Settings
from tests.fixtures.gateway import Person, error_of


def test_no_token_is_401_with_the_error_shape(client: TestClient) -> None:
    resp = client.get("/users/me")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    err = error_of(resp)
    assert err["code"] == "not_authenticated" and "token" in err["message"]
    assert err["request_id"] == resp.headers["X-Request-ID"]


def test_unknown_token_is_401(client: TestClient) -> None:
    resp = client.get("/users/me", headers={"Authorization": "Bearer hpcw_not-a-real-token"})
    assert resp.status_code == 401
    assert error_of(resp)["message"] == "the token is not valid"


def test_me(people: dict[str, Person]) -> None:
    resp = people["alice"].get("/users/me")
    assert resp.status_code == 200
    assert resp.json()["username"] == "alice" and resp.json()["role"] == "scientist"


def test_admin_creates_user_and_token_shown_once(people: dict[str, Person], client: TestClient,
                                                 settings: Settings, unique: str) -> None:
    admin = people["admin"]
    resp = admin.post("/users", json={"username": f"carol{unique}", "role": "scientist"})
    assert resp.status_code == 201, resp.text
    user = resp.json()
    tok = admin.post(f"/users/{user['id']}/tokens", json={"name": "laptop", "expires_in_days": 7})
    assert tok.status_code == 201
    token = tok.json()["token"]
    assert token.startswith("hpcw_") and tok.json()["prefix"] == token[:11]
    me = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["username"] == f"carol{unique}"
    # Listing never shows the token again, and the database holds only its hash.
    listed = admin.get(f"/users/{user['id']}/tokens").json()
    assert all("token" not in t for t in listed)
    engine = make_engine(settings.effective_database_url)
    with make_session_factory(engine)() as db:
        record = repo.token_by_hash(db, hash_token(token))
        assert record is not None and record.token_hash != token
    engine.dispose()


def test_duplicate_username_is_409(people: dict[str, Person]) -> None:
    resp = people["admin"].post("/users", json={"username": "alice"})
    assert resp.status_code == 409
    assert "alice" in error_of(resp)["message"]


def test_bad_username_is_422_naming_the_field(people: dict[str, Person]) -> None:
    resp = people["admin"].post("/users", json={"username": "Robert'); DROP TABLE users;--"})
    assert resp.status_code == 422
    err = error_of(resp)
    assert err["code"] == "validation_error" and "body.username" in err["message"]


def test_scientist_cannot_manage_users(people: dict[str, Person], unique: str) -> None:
    for who in ("alice", "dave"):
        assert people[who].post("/users", json={"username": f"eve{unique}"}).status_code == 403
        assert people[who].get("/users").status_code == 403
        assert people[who].post(f"/users/{people['bob'].id}/tokens", json={}).status_code == 403


def test_revoked_token_is_401(people: dict[str, Person], client: TestClient) -> None:
    alice = people["alice"]
    created = alice.post("/tokens", json={"name": "short-lived"}).json()
    auth = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/users/me", headers=auth).status_code == 200
    assert alice.delete(f"/tokens/{created['id']}").json()["revoked_at"] is not None
    resp = client.get("/users/me", headers=auth)
    assert resp.status_code == 401 and error_of(resp)["message"] == "the token was revoked"


def test_expired_token_is_401(people: dict[str, Person], client: TestClient, settings: Settings) -> None:
    created = people["bob"].post("/tokens", json={"name": "to-expire"}).json()
    engine = make_engine(settings.effective_database_url)
    with make_session_factory(engine)() as db:
        record = repo.token_by_id(db, created["id"])
        assert record is not None
        record.expires_at = utcnow() - timedelta(seconds=1)
        db.commit()
    engine.dispose()
    resp = client.get("/users/me", headers={"Authorization": f"Bearer {created['token']}"})
    assert resp.status_code == 401 and error_of(resp)["message"] == "the token has expired"


def test_users_cannot_revoke_each_others_tokens(people: dict[str, Person]) -> None:
    created = people["alice"].post("/tokens", json={"name": "mine"}).json()
    resp = people["bob"].delete(f"/tokens/{created['id']}")
    assert resp.status_code == 404
    assert people["admin"].delete(f"/tokens/{created['id']}").status_code == 200


def test_disabled_user_is_locked_out(people: dict[str, Person], client: TestClient, unique: str) -> None:
    admin = people["admin"]
    user = admin.post("/users", json={"username": f"frank{unique}"}).json()
    token = admin.post(f"/users/{user['id']}/tokens", json={}).json()["token"]
    assert admin.patch(f"/users/{user['id']}", json={"disabled": True}).status_code == 200
    resp = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and "disabled" in error_of(resp)["message"]


def test_last_admin_cannot_be_demoted(people: dict[str, Person]) -> None:
    admin = people["admin"]
    resp = admin.patch(f"/users/{admin.id}", json={"role": "scientist"})
    assert resp.status_code == 409 and "last admin" in error_of(resp)["message"]


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/ssh_keys/{key_id}/check" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    resp = client.get("/nope")
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"
