"""Request ids, the body limit (including chunked bodies that carry no Content-Length) and the
security headers of every response."""

from __future__ import annotations

from collections.abc import Iterator

from hpcwaas.settings import Settings
from tests.fixtures.gateway import Person, error_of


def test_request_id_is_echoed_or_made(people: dict[str, Person]) -> None:
    given = people["alice"].get("/workflows", headers={"X-Request-ID": "trace-42"})
    assert given.headers["X-Request-ID"] == "trace-42"
    made = people["alice"].get("/workflows")
    assert len(made.headers["X-Request-ID"]) == 32
    # Control characters never reach a response header.
    odd = people["alice"].get("/executions/nope", headers={"X-Request-ID": "a\tb c"})
    assert odd.headers["X-Request-ID"] == "abc"
    assert error_of(odd)["request_id"] == "abc"


def test_chunked_body_over_the_limit_is_413(people: dict[str, Person]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"title": "x", "description": "'
        for _ in range(9):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    resp = people["alice"].post("/catalogue/datasets", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert resp.status_code == 413
    err = error_of(resp)
    assert err["code"] == "payload_too_large" and "8 MiB" in err["message"]
    assert err["request_id"] == resp.headers["X-Request-ID"]


def test_bad_content_length_is_refused_before_reading(people: dict[str, Person]) -> None:
    resp = people["alice"].post("/catalogue/datasets", content=b"{}",
                                headers={"Content-Type": "application/json", "Content-Length": str(64 << 20)})
    assert resp.status_code == 413 and error_of(resp)["code"] == "payload_too_large"


def test_every_response_carries_the_security_headers(people: dict[str, Person]) -> None:
    alice = people["alice"]
    mine = alice.get("/users/me")
    assert mine.headers["X-Content-Type-Options"] == "nosniff"
    assert mine.headers["Cache-Control"] == "no-store"  # authenticated data stays out of shared caches
    assert mine.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    refused = alice.http.get("/users/me")  # no token: an error, still with the headers
    assert refused.status_code == 401 and refused.headers["X-Content-Type-Options"] == "nosniff"
    page = alice.http.get("/catalogue")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"].split("style-src")[0]
    static = alice.http.get("/catalogue/ui/static/catalogue.js")
    assert static.status_code == 200 and static.headers["X-Content-Type-Options"] == "nosniff"


def test_failed_authentications_are_limited_per_client_and_user(settings: Settings, people: dict[str, Person]) -> None:
    """Past the limit a client gets 429 with Retry-After, whatever token it tries next; a user's
    revoked token used again and again is limited too; hints lead to a new token."""
    from fastapi.testclient import TestClient

    from gateway.main import create_app

    limited = settings.model_copy(update={"auth_failures_limit": 3, "auth_failures_window_seconds": 60})
    with TestClient(create_app(limited)) as http:
        bad = {"Authorization": "Bearer hpcw_" + "x" * 43}
        first = http.get("/users/me", headers=bad)
        assert first.status_code == 401 and "waas tokens create --user" in error_of(first)["hint"]
        assert "waas admin bootstrap" in error_of(first)["hint"]  # for an admin without a valid token
        assert [http.get("/users/me", headers=bad).status_code for _ in range(2)] == [401, 401]
        blocked = http.get("/users/me", headers={"Authorization": f"Bearer {people['alice'].token}"})
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
        assert error_of(blocked)["code"] == "too_many_attempts"
    # Another client (address) is not blocked by the first one's failures.
    with TestClient(create_app(limited), client=("192.0.2.7", 50000)) as other:
        assert other.get("/users/me", headers={"Authorization": f"Bearer {people['alice'].token}"}).status_code == 200
    # One user's revoked token, tried from many addresses: limited for that user.
    made = people["alice"].post("/tokens", json={"name": "to-revoke"}).json()
    assert people["alice"].delete(f"/tokens/{made['id']}").status_code == 200
    revoked = {"Authorization": f"Bearer {made['token']}"}
    app = create_app(limited)
    answers = []
    for n in range(4):
        with TestClient(app, client=(f"192.0.2.{20 + n}", 50000)) as somewhere:
            answers.append(somewhere.get("/users/me", headers=revoked).status_code)
    assert answers == [401, 401, 401, 429]
