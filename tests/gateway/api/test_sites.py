"""Sites: registration with a pinned host key, scanning, roles, bad input."""

from __future__ import annotations

from hpcwaas.ssh import generate_keypair
from hpcwaas.stack.info import SiteInfo
from tests.fixtures.gateway import Person, error_of, registered_site


def test_admin_scans_then_registers_and_everyone_lists(people: dict[str, Person], site: SiteInfo,
                                                      unique: str) -> None:
    admin = people["admin"]
    scanned = admin.post("/sites/host-keys", json={"login_host": site.host, "port": site.port})
    assert scanned.status_code == 200, scanned.text
    by_type = {k["key_type"]: k for k in scanned.json()}
    assert by_type[site.host_key_type]["key"] == site.host_key
    assert by_type[site.host_key_type]["fingerprint"].startswith("SHA256:")
    name = f"s-{unique}"
    resp = admin.post(
        "/sites",
        json={"name": name, "login_host": site.host, "port": site.port, "partitions": ["debug"],
              "host_key": by_type[site.host_key_type]["key"]},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["host_key_fingerprint"] == by_type[site.host_key_type]["fingerprint"]
    names = [s["name"] for s in people["alice"].get("/sites").json()]
    assert name in names
    assert people["bob"].get(f"/sites/{name}").json()["port"] == site.port


def test_scientist_and_developer_cannot_register_sites(people: dict[str, Person], site: SiteInfo) -> None:
    body = {"name": "rogue", "login_host": site.host, "port": site.port, "host_key": site.host_key}
    for who in ("alice", "dave"):
        resp = people[who].post("/sites", json=body)
        assert resp.status_code == 403
        assert "admin" in error_of(resp)["message"]
        assert people[who].post("/sites/host-keys", json={"login_host": site.host, "port": site.port}).status_code \
            == 403
    assert people["admin"].get("/sites/rogue").status_code == 404


def test_unknown_site_is_404_naming_it(people: dict[str, Person]) -> None:
    resp = people["alice"].get("/sites/atlantis")
    assert resp.status_code == 404 and "atlantis" in error_of(resp)["message"]


def test_malformed_host_key_is_422_and_nothing_is_saved(people: dict[str, Person], site: SiteInfo,
                                                      unique: str) -> None:
    admin = people["admin"]
    for bad in ("ssh-ed25519 notbase64!!", "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ssh-ed25519 " + "QUFB" * 10):
        resp = admin.post(
            "/sites", json={"name": f"bad-{unique}", "login_host": site.host, "port": site.port, "host_key": bad}
        )
        assert resp.status_code == 422, resp.text
        assert error_of(resp)["details"]["field"] == "public_key"
    assert admin.get(f"/sites/bad-{unique}").status_code == 404


def test_bad_site_fields_are_named(people: dict[str, Person], site: SiteInfo) -> None:
    admin = people["admin"]
    cases = {
        "name": {"name": "Bad Name"},
        "login_host": {"login_host": "host; rm -rf /"},
        "port": {"port": 70000},
        "work_dir": {"work_dir": "relative/../path"},
        "partitions": {"partitions": ["ok", "no spaces"]},
    }
    for field, override in cases.items():
        body = {"name": "x", "login_host": site.host, "port": site.port, "host_key": site.host_key, **override}
        resp = admin.post("/sites", json=body)
        assert resp.status_code == 422, (field, resp.text)
        assert field in error_of(resp)["message"], (field, resp.json())


def test_scanning_an_unreachable_host_is_503(people: dict[str, Person]) -> None:
    resp = people["admin"].post("/sites/host-keys", json={"login_host": "127.0.0.1", "port": 1})
    assert resp.status_code == 503
    err = error_of(resp)
    assert err["code"] == "site_unreachable" and "127.0.0.1:1" in err["message"]


def test_duplicate_site_is_409(people: dict[str, Person], site: SiteInfo) -> None:
    registered_site(people["admin"], site)
    resp = people["admin"].post(
        "/sites", json={"name": "local", "login_host": site.host, "port": site.port, "host_key": site.host_key}
    )
    assert resp.status_code == 409


def test_admin_repins_host_key(people: dict[str, Person], site: SiteInfo, unique: str) -> None:
    admin = people["admin"]
    name = f"repin-{unique}"
    admin.post("/sites", json={"name": name, "login_host": site.host, "port": site.port,
                               "host_key": generate_keypair().public.line})
    resp = admin.patch(f"/sites/{name}", json={"host_key": site.host_key})
    assert resp.status_code == 200 and resp.json()["host_key"] == site.host_key
    assert people["alice"].patch(f"/sites/{name}", json={"port": 2}).status_code == 403
    assert admin.delete(f"/sites/{name}").status_code == 204
