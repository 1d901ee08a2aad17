"""The catalogue's REST API on SQLite and PostgreSQL: the ownership matrix on every endpoint,
validation, oversized bodies, hostile search strings, history, import/export, resolve and DCAT."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.fixtures.gateway import Person, error_of

SHA = "ab" * 32


class Anonymous:
    """The same calls as a Person, without a token."""

    username = "anonymous"

    def __init__(self, http: TestClient) -> None:
        self.http = http

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.get(url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.post(url, **kw)

    def patch(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.patch(url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.delete(url, **kw)


def _dataset(owner: Person, unique: str, access: str, **extra: Any) -> dict[str, Any]:
    body = {
        "title": f"Ocean temperature {access} {unique}",
        "description": f"Sea surface temperature from CTD casts, run {unique}.",
        "location": f"sftp://local/data/{unique}/{access}.nc",
        "format": "netcdf",
        "size_bytes": 1024,
        "checksum_sha256": SHA,
        "keywords": ["ocean", f"tag{unique}"],
        "access": access,
        **extra,
    }
    resp = owner.post("/catalogue/datasets", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.fixture
def actors(people: dict[str, Person], client: TestClient) -> dict[str, Any]:
    return {"owner": people["alice"], "other": people["bob"], "admin": people["admin"], "reader": people["dave"],
            "anonymous": Anonymous(client)}


# Expected status per (access, actor) for reads and writes. "reader" is listed on the entry.
READ = {
    ("public", "owner"): 200, ("public", "other"): 200, ("public", "admin"): 200, ("public", "reader"): 200,
    ("public", "anonymous"): 200,
    ("restricted", "owner"): 200, ("restricted", "other"): 404, ("restricted", "admin"): 200,
    ("restricted", "reader"): 200, ("restricted", "anonymous"): 404,
}
WRITE = {
    ("public", "owner"): 200, ("public", "other"): 403, ("public", "admin"): 200, ("public", "reader"): 403,
    ("public", "anonymous"): 401,
    ("restricted", "owner"): 200, ("restricted", "other"): 404, ("restricted", "admin"): 200,
    ("restricted", "reader"): 403, ("restricted", "anonymous"): 401,
}


@pytest.mark.parametrize("access", ["public", "restricted"])
@pytest.mark.parametrize("actor", ["owner", "other", "admin", "reader", "anonymous"])
def test_ownership_matrix_on_every_endpoint(actors: dict[str, Any], unique: str, access: str, actor: str) -> None:
    owner, who = actors["owner"], actors[actor]
    d = _dataset(owner, unique, access, readers=["dave"])
    base = f"/catalogue/datasets/{d['id']}"
    read, write = READ[(access, actor)], WRITE[(access, actor)]
    seen = read == 200
    got: dict[str, int] = {}
    expected: dict[str, int] = {}

    def check(name: str, resp: httpx.Response, status: int) -> None:
        got[name], expected[name] = resp.status_code, status
        if resp.status_code >= 400:
            error_of(resp)  # the one error shape

    for suffix in ("", "/history", "/resolve", "/dcat"):
        check(f"GET {suffix or '/'}", who.get(base + suffix), read)
    listing = who.get("/catalogue/datasets", params={"keyword": f"tag{unique}"})
    check("GET /datasets", listing, 200)
    assert (d["id"] in [i["id"] for i in listing.json()["items"]]) == seen
    found = who.get("/catalogue/search", params={"q": f"temperature tag{unique}"})
    check("GET /search", found, 200)
    assert (d["id"] in [i["id"] for i in found.json()["items"]]) == seen
    export = who.get("/catalogue/export.jsonl")
    check("GET /export.jsonl", export, 200)
    assert (d["id"] in export.text) == seen
    harvest = who.get("/catalogue/dcat")
    check("GET /dcat", harvest, 200)
    assert (d["id"] in harvest.text) == seen
    check("PATCH", who.patch(base, json={"description": f"changed by {actor}"}), write)
    line = json.dumps({"id": d["id"], "title": f"imported by {actor}", "access": access, "readers": ["dave"]})
    imported = who.post("/catalogue/import", content=line + "\n", headers={"Content-Type": "application/x-ndjson"})
    check("POST /import", imported, {200: 200, 401: 401}.get(write, 422))
    check("DELETE", who.delete(base), {200: 204}.get(write, write))
    assert got == expected
    after = owner.get(base)
    assert after.status_code == (404 if write == 200 else 200)


def test_a_file_on_the_gateways_host_is_shown_to_its_owner_only(actors: dict[str, Any], unique: str) -> None:
    """Anonymous listings showed file:///var/tmp/.../storage/...: a path of the gateway's host."""
    d = _dataset(actors["owner"], unique, "public", location=f"file:///srv/hpcwaas/storage/{unique}/zen.txt")
    for who in ("anonymous", "other"):
        shown = actors[who].get(f"/catalogue/datasets/{d['id']}").json()
        assert shown["location"] == f"dataset:{d['id']}" and shown["path"] is None, shown
        listed = actors[who].get("/catalogue/datasets", params={"q": f"tag{unique}"}).json()["items"]
        assert "/srv/hpcwaas" not in str(listed) and listed, listed
    for who in ("owner", "admin"):
        assert actors[who].get(f"/catalogue/datasets/{d['id']}").json()["location"].startswith("file:///srv/")


def test_readers_list_shown_to_owner_and_admin_only(actors: dict[str, Any], unique: str) -> None:
    d = _dataset(actors["owner"], unique, "restricted", readers=["dave", "bob"])
    assert actors["owner"].get(f"/catalogue/datasets/{d['id']}").json()["readers"] == ["bob", "dave"]
    assert actors["admin"].get(f"/catalogue/datasets/{d['id']}").json()["readers"] == ["bob", "dave"]
    assert actors["reader"].get(f"/catalogue/datasets/{d['id']}").json()["readers"] is None


@pytest.mark.parametrize("actor", ["owner", "other", "admin", "anonymous"])
def test_storage_target_ownership(actors: dict[str, Any], unique: str, actor: str) -> None:
    owner, who = actors["owner"], actors[actor]
    name = f"scratch-{unique}"
    created = owner.post("/catalogue/storage-targets",
                         json={"name": name, "site": "local", "protocol": "sftp", "base_path": "/scratch/data"})
    assert created.status_code == 201, created.text
    write = {"owner": 200, "admin": 200, "other": 403, "anonymous": 401}[actor]
    assert who.get("/catalogue/storage-targets").status_code == 200
    assert who.get(f"/catalogue/storage-targets/{name}").status_code == 200
    assert who.patch(f"/catalogue/storage-targets/{name}", json={"description": "x"}).status_code == write
    new = who.post("/catalogue/storage-targets",
                   json={"name": f"n{unique}-{actor}", "site": "local", "protocol": "sftp", "base_path": "/x"})
    assert new.status_code == (401 if actor == "anonymous" else 201)
    assert who.delete(f"/catalogue/storage-targets/{name}").status_code == {200: 204}.get(write, write)


def test_create_needs_a_token_and_a_bad_token_is_401(client: TestClient) -> None:
    assert client.post("/catalogue/datasets", json={"title": "x"}).status_code == 401
    bad = client.get("/catalogue/datasets", headers={"Authorization": "Bearer hpcw_nope"})
    assert bad.status_code == 401 and error_of(bad)["code"] == "not_authenticated"


def test_storage_target_location_resolves_under_its_base(people: dict[str, Person], unique: str) -> None:
    alice, bob = people["alice"], people["bob"]
    name = f"proj-{unique}"
    assert alice.post("/catalogue/storage-targets", json={"name": name, "site": "local", "protocol": "sftp",
                                                          "base_path": "/gpfs/projects/ocean"}).status_code == 201
    d = _dataset(alice, unique, "public", location=None, storage_target=name, path="runs/2024/out.nc")
    resolved = bob.get(f"/catalogue/datasets/{d['id']}/resolve").json()
    assert resolved == {
        "dataset_id": d["id"], "owner_id": alice.id, "protocol": "sftp", "site": "local",
        "path": "/gpfs/projects/ocean/runs/2024/out.nc",
        "url": "sftp://local/gpfs/projects/ocean/runs/2024/out.nc", "storage_target": name,
        "checksum_sha256": SHA, "size_bytes": 1024, "format": "netcdf", "revision": 1,
    }
    in_use = alice.delete(f"/catalogue/storage-targets/{name}")
    assert in_use.status_code == 409 and "1 dataset" in error_of(in_use)["message"]
    moving = alice.patch(f"/catalogue/storage-targets/{name}", json={"base_path": "/elsewhere"})
    assert moving.status_code == 409
    escape = alice.post("/catalogue/datasets", json={"title": "x", "storage_target": name, "path": "../../etc/passwd"})
    assert escape.status_code == 422 and error_of(escape)["details"][0]["field"] == "body.path"
    unknown = alice.post("/catalogue/datasets", json={"title": "x", "storage_target": "nowhere", "path": "a"})
    assert unknown.status_code == 404 and error_of(unknown)["details"]["storage_target"] == "nowhere"


def test_unresolvable_dataset_is_a_clear_error(people: dict[str, Person], unique: str) -> None:
    alice = people["alice"]
    d = _dataset(alice, unique, "restricted", location=None)
    resp = alice.get(f"/catalogue/datasets/{d['id']}/resolve")
    assert resp.status_code == 409
    err = error_of(resp)
    assert err["code"] == "dataset_unresolvable" and "no location" in err["message"] and err["hint"]
    assert people["bob"].get(f"/catalogue/datasets/{d['id']}/resolve").status_code == 404
    missing = alice.get("/catalogue/datasets/0123456789abcdef0123456789abcdef/resolve")
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "body.title"),
        ({"title": "x", "size_bytes": -5}, "body.size_bytes"),
        ({"title": "x", "checksum_sha256": "xyz"}, "body.checksum_sha256"),
        ({"title": "x", "access": "secret"}, "body.access"),
        ({"title": "x", "location": "ftp://host/file"}, "body.location"),
        ({"title": "x", "location": "sftp://user:pw@site/data"}, "body.location"),
        ({"title": "x", "location": "sftp://site/data/../../etc"}, "body.location"),
        ({"title": "x", "keywords": ["ok", "x" * 65]}, "body.keywords.1"),
        ({"title": "x", "creators": [{"name": "A", "orcid": "123"}]}, "body.creators.0.orcid"),
        ({"title": "x", "doi": "not-a-doi"}, "body.doi"),
        ({"title": "x", "readers": ["Not A User"]}, "body.readers.0"),
        ({"title": "x", "metadata": {"bad key!": 1}}, "body.metadata.bad key!.[key]"),
        ({"title": "x", "colour": "blue"}, "body.colour"),
        ({"title": "line\nbreak"}, "body.title"),
    ],
)
def test_invalid_metadata_is_422_naming_the_field(people: dict[str, Person], body: dict[str, Any],
                                                   field: str) -> None:
    resp = people["alice"].post("/catalogue/datasets", json=body)
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert err["code"] == "validation_error"
    assert err["details"][0]["field"] == field, err
    assert field in err["message"]


def test_oversized_body_is_413(people: dict[str, Person]) -> None:
    big = b'{"title": "x", "description": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    resp = people["alice"].post("/catalogue/datasets", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and error_of(resp)["code"] == "payload_too_large"
    imp = people["alice"].post("/catalogue/import", content=big, headers={"Content-Type": "application/x-ndjson"})
    assert imp.status_code == 413


HOSTILE = [
    "'; DROP TABLE catalogue_datasets; --",
    '" OR 1=1 --',
    "ocean*",
    'title:ocean AND NOT "x',
    "NEAR(ocean temperature, 2)",
    "ocean OR temperature",
    "(ocean",
    "ocean & temperature | !x <-> y:*",
    "^ocean",
    "a" * 400,
    "οκεανός 海洋 temperatür",
]


@pytest.mark.parametrize("q", HOSTILE)
def test_hostile_search_strings_are_safe(people: dict[str, Person], client: TestClient, q: str) -> None:
    resp = client.get("/catalogue/search", params={"q": q})
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["items"], list)
    # The table survived, and the catalogue still answers.
    assert client.get("/catalogue/datasets").status_code == 200


@pytest.mark.parametrize("q", ["***", "'\"();--", "\\' \\\" %_", "   ", "a" * 501])
def test_search_without_words_or_too_long_is_a_clear_422(client: TestClient, q: str) -> None:
    resp = client.get("/catalogue/search", params={"q": q})
    assert resp.status_code == 422
    err = error_of(resp)
    assert "q" in json.dumps(err["details"]) and err["message"]


def test_search_finds_prefixes_highlights_and_escapes(people: dict[str, Person], client: TestClient,
                                                      unique: str) -> None:
    alice = people["alice"]
    d = _dataset(alice, unique, "public", title=f"Salinity <script>alert(1)</script> {unique}",
                 description="Profiles of salinity and temperature in the North Atlantic.")
    page = client.get("/catalogue/search", params={"q": f"salin {unique}"}).json()
    hit = next(i for i in page["items"] if i["id"] == d["id"])
    assert "<mark>Salinity</mark>" in hit["highlight"]["title_html"]
    assert "&lt;script&gt;" in hit["highlight"]["title_html"] and "<script>" not in hit["highlight"]["title_html"]
    assert "<mark>salinity</mark>" in hit["highlight"]["snippet_html"]
    by_keyword = client.get("/catalogue/search", params={"q": f"tag{unique}"}).json()
    assert [i["id"] for i in by_keyword["items"]] == [d["id"]]


def test_filters_sorting_and_cursor_pagination(people: dict[str, Person], client: TestClient, unique: str) -> None:
    bob = people["bob"]
    made = [_dataset(bob, unique, "public", title=f"{unique} set {n:02d}", size_bytes=n * 10,
                     format="csv" if n % 2 else "netcdf") for n in range(7)]
    tag = f"tag{unique}"
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"keyword": tag, "sort": "title", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/catalogue/datasets", params=params).json()
        seen += [i["title"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(d["title"] for d in made)
    csv = client.get("/catalogue/datasets", params={"keyword": tag, "format": "csv", "sort": "size",
                                                    "order": "asc"}).json()
    assert [i["size_bytes"] for i in csv["items"]] == [10, 30, 50]
    assert all(i["owner"] == "bob" for i in client.get("/catalogue/datasets", params={"owner": "bob"}).json()["items"])
    newest = client.get("/catalogue/datasets", params={"keyword": tag, "limit": 2}).json()
    assert [i["id"] for i in newest["items"]] == [made[-1]["id"], made[-2]["id"]]
    bad = client.get("/catalogue/datasets", params={"cursor": "garbage!"})
    assert bad.status_code == 422 and error_of(bad)["details"]["field"] == "cursor"
    wrong_sort = client.get("/catalogue/datasets", params={"keyword": tag, "sort": "size", "cursor": page.get("x", "")
                                                           or _cursor_of(client, tag)})
    assert wrong_sort.status_code == 422
    unknown = client.get("/catalogue/datasets", params={"colour": "red"})
    assert unknown.status_code == 422 and "colour" in error_of(unknown)["message"]
    limit = client.get("/catalogue/datasets", params={"limit": 1000})
    assert limit.status_code == 422 and "limit" in error_of(limit)["message"]


def _cursor_of(client: TestClient, tag: str) -> str:
    return str(client.get("/catalogue/datasets", params={"keyword": tag, "sort": "title", "limit": 1})
               .json()["next_cursor"])


def test_history_keeps_who_and_when(people: dict[str, Person], unique: str) -> None:
    alice, admin = people["alice"], people["admin"]
    d = _dataset(alice, unique, "restricted")
    base = f"/catalogue/datasets/{d['id']}"
    assert alice.patch(base, json={"title": "Renamed", "expected_revision": 1}).json()["revision"] == 2
    same = alice.patch(base, json={"title": "Renamed"})
    assert same.json()["revision"] == 2  # nothing changed, no new version
    stale = admin.patch(base, json={"license": "CC-BY-4.0", "expected_revision": 1})
    assert stale.status_code == 409 and error_of(stale)["hint"]
    assert admin.patch(base, json={"license": "CC-BY-4.0", "keywords": ["x"]}).status_code == 200
    history = alice.get(f"{base}/history").json()
    assert [(v["revision"], v["action"], v["actor"]) for v in history] == [
        (3, "updated", "admin"), (2, "updated", "alice"), (1, "created", "alice")]
    assert history[0]["changes"] == ["keywords", "license"]
    assert history[1]["snapshot"]["title"] == "Renamed"
    assert alice.delete(base).status_code == 204
    assert alice.get(f"{base}/history").status_code == 404
    kept = admin.get(f"{base}/history").json()
    assert kept[0]["action"] == "deleted" and kept[0]["actor"] == "alice"


def test_update_validation_and_clearing(people: dict[str, Person], unique: str) -> None:
    alice = people["alice"]
    d = _dataset(alice, unique, "public", license="MIT")
    base = f"/catalogue/datasets/{d['id']}"
    cleared = alice.patch(base, json={"license": None, "location": None})
    assert cleared.status_code == 200 and cleared.json()["license"] is None and cleared.json()["protocol"] is None
    assert alice.patch(base, json={"title": None}).status_code == 422
    both = alice.patch(base, json={"location": "https://example.org/a.csv", "path": "a"})
    assert both.status_code == 422


def test_import_export_round_trip_all_or_nothing(people: dict[str, Person], client: TestClient, unique: str) -> None:
    alice, bob = people["alice"], people["bob"]
    lines = [json.dumps({"title": f"Imported {unique} {n}", "keywords": [f"imp{unique}"], "access": "public",
                         "location": f"https://data.example.org/{unique}/{n}.csv", "format": "text/csv"})
             for n in range(5)]
    report = alice.post("/catalogue/import", content="\n".join(lines) + "\n",
                        headers={"Content-Type": "application/x-ndjson"})
    assert report.status_code == 200, report.text
    assert report.json()["created"] == 5
    ids = report.json()["ids"]
    exported = [json.loads(x) for x in alice.get("/catalogue/export.jsonl").text.splitlines()]
    mine = [r for r in exported if r["id"] in ids]
    assert len(mine) == 5 and all("owner" not in r for r in mine)
    again = alice.post("/catalogue/import", content="\n".join(json.dumps(r) for r in mine),
                       headers={"Content-Type": "application/x-ndjson"}).json()
    assert again == {"created": 0, "updated": 0, "unchanged": 5, "ids": ids}
    mine[0]["title"] = "Changed by import"
    bad = [*mine, {"title": ""}, "not json", {"title": "x", "storage_target": "nope", "path": "a"}]
    rejected = alice.post("/catalogue/import", content="\n".join(x if isinstance(x, str) else json.dumps(x)
                                                                 for x in bad),
                          headers={"Content-Type": "application/x-ndjson"})
    assert rejected.status_code == 422
    err = error_of(rejected)
    assert err["code"] == "import_rejected" and "line 6" in err["message"]
    assert [p["line"] for p in err["details"]["lines"]] == [6, 7, 8]
    assert alice.get(f"/catalogue/datasets/{ids[0]}").json()["title"] != "Changed by import"  # nothing written
    foreign = bob.post("/catalogue/import", content=json.dumps(mine[0]),
                       headers={"Content-Type": "application/x-ndjson"})
    assert foreign.status_code == 422 and "owner" in error_of(foreign)["details"]["lines"][0]["message"]
    updated = alice.post("/catalogue/import", content=json.dumps(mine[0]),
                         headers={"Content-Type": "application/x-ndjson"}).json()
    assert updated["updated"] == 1
    assert client.get(f"/catalogue/datasets/{ids[0]}").json()["title"] == "Changed by import"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dcat_is_json_ld_that_parses_to_dcat_and_schema_org(people: dict[str, Person], client: TestClient,
                                                             unique: str) -> None:
    rdflib = pytest.importorskip("rdflib")
    d = _dataset(people["alice"], unique, "public", license="CC-BY-4.0", doi="10.5281/zenodo.12345",
                 creators=[{"name": "Ada Lovelace", "orcid": "0000-0002-1825-0097"}], version="1.0")
    resp = client.get(f"/catalogue/datasets/{d['id']}/dcat")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/ld+json")
    graph = rdflib.Graph().parse(data=resp.text, format="json-ld")
    dcat, dct, schema = (rdflib.Namespace(n) for n in ("http://www.w3.org/ns/dcat#", "http://purl.org/dc/terms/",
                                                        "https://schema.org/"))
    node = rdflib.URIRef(f"http://testserver/catalogue/datasets/{d['id']}")
    assert (node, rdflib.RDF.type, dcat.Dataset) in graph and (node, rdflib.RDF.type, schema.Dataset) in graph
    assert str(graph.value(node, dct.title)) == d["title"]
    assert (node, dct.license, rdflib.URIRef("https://spdx.org/licenses/CC-BY-4.0")) in graph
    assert (node, dct.creator, rdflib.URIRef("https://orcid.org/0000-0002-1825-0097")) in graph
    dist = graph.value(node, dcat.distribution)
    assert int(graph.value(dist, dcat.byteSize)) == 1024
    whole = client.get("/catalogue/dcat")
    catalog = rdflib.Graph().parse(data=whole.text, format="json-ld")
    assert (None, dcat.dataset, node) in catalog
