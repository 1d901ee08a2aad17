"""Request ids, the body limit (including chunked bodies that carry no Content-Length) and the
security headers of every response."""

from __future__ import annotations

from collections.abc import Iterator

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
