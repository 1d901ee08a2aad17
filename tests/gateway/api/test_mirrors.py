"""Mirrors in the catalogue: who may define, see, trigger and delete them, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from hpcwaas.stack.info import SiteInfo
from tests.fixtures.gateway import Person, error_of, registered_site


@pytest.fixture
def target(people: dict[str, Person], site: SiteInfo, unique: str) -> dict[str, Any]:
    """A file storage target alice owns, on a registered site, and alice's key."""
    registered_site(people["admin"], site)
    made = people["alice"].post("/catalogue/storage-targets", json={
        "name": f"t-{unique}", "site": "localhost", "protocol": "file", "base_path": f"/srv/data/{unique}"})
    assert made.status_code == 201, made.text
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    return {"name": f"t-{unique}", "id": made.json()["id"], "key": key["id"], "unique": unique}


def _mirror(target: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"name": f"m-{target['unique']}", "storage_target": target["name"], "path": "inputs",
            "site": "local", "site_path": "mirror/inputs", "ssh_key": target["key"], **over}


def test_owner_defines_sees_triggers_and_deletes(people: dict[str, Person], target: dict[str, Any]) -> None:
    alice = people["alice"]
    made = alice.post("/catalogue/mirrors", json=_mirror(target, description="inputs for the cluster"))
    assert made.status_code == 201, made.text
    mirror = made.json()
    assert made.headers["Location"] == f"/catalogue/mirrors/{mirror['id']}"
    assert mirror["login"] == "sciuser1" and mirror["source_path"] == "inputs" and mirror["enabled"]
    assert mirror["wake_at"] is not None and mirror["runs"] == 0  # the first sync is due at once
    assert [m["id"] for m in alice.get("/catalogue/mirrors").json()] == [mirror["id"]]
    assert mirror["id"] in [m["id"] for m in people["admin"].get("/catalogue/mirrors").json()]
    assert people["bob"].get("/catalogue/mirrors").json() == []
    for other in ("bob", "dave"):
        assert people[other].get(f"/catalogue/mirrors/{mirror['id']}").status_code == 404
        assert people[other].post(f"/catalogue/mirrors/{mirror['id']}/sync").status_code == 404
        assert people[other].delete(f"/catalogue/mirrors/{mirror['id']}").status_code == 404
    synced = people["admin"].post(f"/catalogue/mirrors/{mirror['id']}/sync")
    assert synced.status_code == 202 and synced.json()["wake_at"] >= mirror["wake_at"]
    assert alice.http.get("/catalogue/mirrors").status_code == 401  # no token
    in_use = alice.delete(f"/catalogue/storage-targets/{target['name']}")
    assert in_use.status_code == 409 and "mirror" in error_of(in_use)["message"]
    assert alice.delete(f"/catalogue/mirrors/{mirror['id']}").status_code == 204
    assert alice.get(f"/catalogue/mirrors/{mirror['id']}").status_code == 404
    assert alice.delete(f"/catalogue/storage-targets/{target['name']}").status_code == 204


def test_only_the_storage_targets_owner_or_an_admin_may_mirror_it(people: dict[str, Person],
                                                                   target: dict[str, Any]) -> None:
    bob_key = people["bob"].post("/ssh_keys", json={"login": "sciuser1"}).json()["id"]
    refused = people["bob"].post("/catalogue/mirrors", json=_mirror(target, ssh_key=bob_key))
    assert refused.status_code == 403 and "restricted ones too" in (error_of(refused).get("hint") or "")
    admin_key = people["admin"].post("/ssh_keys", json={"login": "sciuser1"}).json()["id"]
    allowed = people["admin"].post("/catalogue/mirrors", json=_mirror(target, ssh_key=admin_key))
    assert allowed.status_code == 201, allowed.text
    assert people["admin"].delete(f"/catalogue/mirrors/{allowed.json()['id']}").status_code == 204


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"path": "../etc"}, 422, "path"),
    ({"site_path": "/etc/cron.d"}, 422, "site_path"),
    ({"site_path": "a/../../b"}, 422, "site_path"),
    ({"site_path": ""}, 422, "site_path"),
    ({"name": "Bad Name"}, 422, "name"),
    ({"storage_target": "no-such-target"}, 404, None),
    ({"site": "no-such-site"}, 404, None),
    ({"ssh_key": "0" * 32}, 404, None),
])
def test_bad_input_names_the_problem(people: dict[str, Person], target: dict[str, Any], change: dict[str, Any],
                                     status: int, field: str | None) -> None:
    resp = people["alice"].post("/catalogue/mirrors", json=_mirror(target, **change))
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    if field is not None:
        assert field in err["message"]
    assert people["alice"].get("/catalogue/mirrors").json() == []  # nothing half-written


def test_a_name_is_taken_once_and_https_targets_cannot_be_mirrored(people: dict[str, Person],
                                                                   target: dict[str, Any]) -> None:
    alice = people["alice"]
    first = alice.post("/catalogue/mirrors", json=_mirror(target))
    assert first.status_code == 201
    again = alice.post("/catalogue/mirrors", json=_mirror(target, path="other"))
    assert again.status_code == 409 and "name" in error_of(again)["message"]
    web = alice.post("/catalogue/storage-targets", json={
        "name": f"w-{target['unique']}", "site": "example.org", "protocol": "https", "base_path": "/pub"})
    assert web.status_code == 201, web.text
    refused = alice.post("/catalogue/mirrors", json=_mirror(target, name=f"w-{target['unique']}",
                                                            storage_target=f"w-{target['unique']}"))
    assert refused.status_code == 422 and "cannot read" in error_of(refused)["message"]
    assert alice.delete(f"/catalogue/mirrors/{first.json()['id']}").status_code == 204
