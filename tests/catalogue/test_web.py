"""The catalogue's HTML pages: rendering, escaping, login by cookie, CSRF, permissions; and a
headless Chromium (Debian's, driven by Playwright) that searches, opens a dataset and edits one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from hpcwaas.settings import Settings
from tests.fixtures.gateway import Person, artifacts_dir
from tests.fixtures.live import live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@pytest.fixture
def browser_client(settings: Settings) -> Iterator[TestClient]:
    """A client of its own, so its cookies stay out of the shared one."""
    with TestClient(create_app(settings)) as c:
        yield c


def _create(person: Person, **body: Any) -> dict[str, Any]:
    resp = person.post("/catalogue/datasets", json={"access": "public", **body})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_pages_escape_user_text_and_hide_restricted_entries(people: dict[str, Person], browser_client: TestClient,
                                                             unique: str) -> None:
    alice = people["alice"]
    evil = _create(alice, title=f"<script>alert('x')</script> plankton {unique}", keywords=[f"k{unique}"],
                   description='"><img src=x onerror=alert(1)>')
    secret = _create(alice, title=f"Secret plankton {unique}", access="restricted")
    page = browser_client.get("/catalogue", params={"q": f"plankton {unique}"})
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text and "<mark>plankton</mark>" in page.text
    assert secret["id"] not in page.text and evil["id"] in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    detail = browser_client.get(f"/catalogue/ui/datasets/{evil['id']}")
    assert detail.status_code == 200 and "<img src=x" not in detail.text
    hidden = browser_client.get(f"/catalogue/ui/datasets/{secret['id']}")
    assert hidden.status_code == 404 and secret["title"] not in hidden.text
    assert browser_client.get("/catalogue", params={"q": "***"}).status_code == 422


def test_login_sets_an_http_only_cookie_and_checks_csrf(people: dict[str, Person], browser_client: TestClient,
                                                        unique: str) -> None:
    alice = people["alice"]
    secret = _create(alice, title=f"Private krill {unique}", access="restricted")
    form = browser_client.get("/catalogue/ui/login", params={"next": "https://evil.example.org/"})
    csrf = _csrf(form.text)
    assert 'value="/catalogue"' in form.text  # an outside 'next' is dropped
    forged = browser_client.post("/catalogue/ui/login", data={"token": alice.token, "csrf": "forged"},
                                 follow_redirects=False)
    assert forged.status_code == 403
    wrong = browser_client.post("/catalogue/ui/login", data={"token": "hpcw_wrong", "csrf": csrf})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    ok = browser_client.post("/catalogue/ui/login", data={"token": alice.token, "csrf": csrf,
                                                          "next": "/catalogue"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/catalogue"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/catalogue" in cookie
    assert alice.token not in ok.headers["location"]
    assert browser_client.get(f"/catalogue/ui/datasets/{secret['id']}").status_code == 200
    edit = browser_client.get(f"/catalogue/ui/datasets/{secret['id']}/edit")
    no_csrf = browser_client.post(f"/catalogue/ui/datasets/{secret['id']}/edit",
                                  data={"title": "hijacked", "access": "public"})
    assert no_csrf.status_code == 403
    bad = browser_client.post(f"/catalogue/ui/datasets/{secret['id']}/edit",
                              data={"csrf": _csrf(edit.text), "title": "x", "access": "restricted",
                                    "location_mode": "none", "checksum_sha256": "nothex", "metadata": "[1]"})
    assert bad.status_code == 422
    assert 'id="problem-checksum_sha256"' in bad.text and 'id="problem-metadata"' in bad.text
    assert people["alice"].get(f"/catalogue/datasets/{secret['id']}").json()["title"] == secret["title"]
    bobs = _create(people["bob"], title=f"Bob's {unique}")
    assert browser_client.get(f"/catalogue/ui/datasets/{bobs['id']}/edit").status_code == 403
    logout = browser_client.post("/catalogue/ui/logout", data={"csrf": _csrf(edit.text)}, follow_redirects=False)
    assert logout.status_code == 303
    assert browser_client.get(f"/catalogue/ui/datasets/{secret['id']}").status_code == 404


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    with live_server(create_app(settings)) as url:
        yield url


@pytest.mark.slow
def test_browser_searches_opens_and_edits_a_dataset(people: dict[str, Person], settings: Settings, served: str,
                                                    unique: str) -> None:
    if "postgresql" in settings.effective_database_url:
        pytest.skip("the browser test runs once, on SQLite (the pages are the same on both)")
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (scripts/install-system.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = artifacts_dir() / "catalogue"
    shots.mkdir(parents=True, exist_ok=True)
    alice, bob = people["alice"], people["bob"]
    target = f"gl-{unique}"
    assert alice.post("/catalogue/storage-targets", json={"name": target, "site": "local", "protocol": "sftp",
                                                          "base_path": "/gpfs/projects/glaciers"}).status_code == 201
    mine = _create(alice, title=f"Greenland glacier velocity {unique}", format="netcdf", size_bytes=73_400_320,
                   description="Surface velocity of Greenland outlet glaciers from Sentinel-1 offset tracking, "
                               "monthly mosaics 2015-2024.", keywords=["glaciers", "greenland", "velocity"],
                   license="CC-BY-4.0", checksum_sha256="3f" * 32, storage_target=target, path="velocity/v3.nc",
                   creators=[{"name": "Ada Glaciologist", "orcid": "0000-0002-1825-0097"}], doi="10.5281/zenodo.42")
    _create(bob, title=f"Alpine glacier mass balance {unique}", format="csv", keywords=["glaciers", "alps"],
            location="https://data.example.org/alps/mass-balance.csv", description="Annual glacier mass balance.")
    _create(alice, title=f"Antarctic ice shelf thickness {unique}", keywords=["ice", "antarctica"],
            location="sftp://local/gpfs/projects/ice/shelves.zarr", format="zarr")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{served}/catalogue")
        page.fill("#q", f"glacier {unique}")
        page.click("#search-button")
        page.wait_for_selector("#results mark")
        titles = page.locator("#results article h3 a")
        assert titles.count() == 2
        assert page.locator("#results mark").first.inner_text().lower().startswith("glacier")
        page.screenshot(path=str(shots / "01-search.png"), full_page=True)

        page.click(f"a[href='/catalogue/ui/datasets/{mine['id']}']")
        page.wait_for_selector("#dataset-title")
        assert "Greenland glacier velocity" in page.inner_text("#dataset-title")
        assert "/gpfs/projects/glaciers/velocity/v3.nc" in page.content()
        assert page.locator("#history tbody tr").count() == 1
        assert page.locator("#edit-link").count() == 0  # anonymous: no edit button
        page.screenshot(path=str(shots / "02-dataset.png"), full_page=True)

        page.click("#login-link")
        page.fill("#token", alice.token)
        page.click("#login-button")
        page.wait_for_selector("#user")
        assert alice.token not in page.url
        assert all(c["httpOnly"] for c in page.context.cookies() if c["name"] == "hpcwaas_catalogue_token")
        assert page.evaluate("document.cookie").find(alice.token) == -1
        page.goto(f"{served}/catalogue/ui/datasets/{mine['id']}")
        page.click("#edit-link")
        page.wait_for_selector("#f-title")
        page.fill("#f-checksum_sha256", "not-a-checksum")
        page.click("#save")
        page.wait_for_selector("#problem-checksum_sha256")
        page.screenshot(path=str(shots / "03-edit-invalid.png"), full_page=True)
        page.fill("#f-checksum_sha256", "3f" * 32)
        page.fill("#f-title", f"Greenland glacier surface velocity v3 {unique}")
        page.fill("#f-keywords", "glaciers, greenland, velocity, sentinel-1")
        page.fill("#f-version", "3.0")
        page.screenshot(path=str(shots / "04-edit-form.png"), full_page=True)
        page.click("#save")
        page.wait_for_selector("#history")
        assert "surface velocity v3" in page.inner_text("#dataset-title")
        rows = page.locator("#history tbody tr")
        assert rows.count() == 2 and "alice" in rows.first.inner_text() and "keywords" in rows.first.inner_text()
        page.screenshot(path=str(shots / "05-edited.png"), full_page=True)
        browser.close()

    after = alice.get(f"/catalogue/datasets/{mine['id']}").json()
    assert after["revision"] == 2 and after["version"] == "3.0" and "sentinel-1" in after["keywords"]
    assert after["storage_target"]["name"] == target and after["path"] == "velocity/v3.nc"
