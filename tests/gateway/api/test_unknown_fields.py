"""Request bodies refuse fields they do not know (a 422 naming them): an ignored field is a
request silently reinterpreted (seen: POST /tokens with expires_at, role or user_id answered 201
with an ordinary 90-day token)."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import Person, error_of


@pytest.mark.parametrize(("who", "url", "body", "unknown"), [
    ("alice", "/tokens", {"name": "t", "expiry": "2030-01-01T00:00:00Z"}, "expiry"),
    ("alice", "/tokens", {"name": "t", "role": "admin"}, "role"),
    ("alice", "/tokens", {"name": "t", "user_id": "someone"}, "user_id"),
    ("alice", "/ssh_keys", {"login": "sciuser1", "owner": "bob"}, "owner"),
    ("admin", "/users", {"username": "zed", "password": "x"}, "password"),
    ("admin", "/sites", {"name": "s", "login_host": "h", "host_key": "ssh-ed25519 " + "A" * 68, "auth": "x"},
     "auth"),
    ("dave", "/deployments", {"workflow": "w", "site": "local", "ssh_key": "k", "force": True}, "force"),
    ("alice", "/workflows/w/executions", {"ssh_key": "k", "priority": 1}, "priority"),
    ("dave", "/workflows", {"name": "w", "source": {"kind": "folder", "path": "/x", "depth": 1}}, "depth"),
    ("alice", "/pipelines/stage_in/runs", {"ssh_key": "k", "source": "https://8.8.8.8/x",
                                           "target": "sftp://local/x", "retries": 3}, "retries"),
])
def test_an_unknown_field_is_refused(people: dict[str, Person], who: str, url: str, body: dict, unknown: str
                                     ) -> None:
    resp = people[who].post(url, json=body)
    assert resp.status_code == 422, (url, resp.status_code, resp.text[:300])
    error = error_of(resp)
    assert unknown in str(error), error


def test_a_tokens_lifetime_is_a_duration_or_an_expiry_time(people: dict[str, Person]) -> None:
    """The fields that were ignored are now understood (expires_at) or refused by name."""
    from datetime import UTC, datetime, timedelta

    alice = people["alice"]
    at = alice.post("/tokens", json={"name": "until", "expires_at": "2030-01-01T00:00:00Z"})
    assert at.status_code == 201 and at.json()["expires_at"].startswith("2030-01-01T00:00:00"), at.text
    lasting = alice.post("/tokens", json={"name": "hours", "expires_in": "PT12H"})
    expires = datetime.fromisoformat(lasting.json()["expires_at"])
    expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    assert abs(expires - datetime.now(UTC) - timedelta(hours=12)) < timedelta(minutes=1)
    for body, said in [({"expires_in": "PT12H", "expires_in_days": 3}, "give one lifetime"),
                       ({"expires_at": "2020-01-01T00:00:00Z"}, "from a minute to ten years"),
                       ({"expires_at": "2030-01-01T00:00:00"}, "needs a time zone"),
                       ({"expires_in": "P20000D"}, "from a minute to ten years")]:
        refused = alice.post("/tokens", json={"name": "bad", **body})
        assert refused.status_code == 422 and said in error_of(refused)["message"], refused.text


@pytest.mark.parametrize(("url", "unknown"), [
    ("/executions?limt=5", "limt"),
    ("/executions?=", "(empty name)"),
    ("/deployments?state=deployed", "state"),
    ("/catalogue/datasets?keywords=x", "keywords"),  # the listing's own model refuses it
])
def test_an_unknown_query_parameter_is_refused(people: dict[str, Person], url: str, unknown: str) -> None:
    """``?limt=5`` was ignored: the listing answered with the default 100, a typo silently obeyed."""
    resp = people["alice"].get(url)
    assert resp.status_code == 422, (url, resp.status_code, resp.text[:300])
    assert unknown in error_of(resp)["message"], error_of(resp)


def test_since_is_a_moment_with_its_zone_not_a_number(people: dict[str, Person]) -> None:
    alice = people["alice"]
    assert alice.get("/executions", params={"since": "2026-01-01T00:00:00Z"}).status_code == 200
    for since in ("1700000000", "-5.9e-08", "2026-01-01T00:00:00"):
        refused = alice.get("/executions", params={"since": since})
        message = error_of(refused)["message"]
        assert refused.status_code == 422 and ("with its zone" in message or "timezone" in message), refused.text
