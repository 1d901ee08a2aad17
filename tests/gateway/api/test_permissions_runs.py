"""The permission matrix of every workflow, deployment and execution endpoint.

One row per route of the three routers, one column per role, for a public and for a restricted
workflow. The routes come from the app itself: a route added to one of these routers without a
row here fails ``test_every_route_has_a_row``.

The cast (the engine is off: records stay as the API leaves them):

- ``owner``: dave, the developer who registered the workflow and deployed it;
- ``scientist``: alice, who invoked the execution (its owner) and is listed on the restricted workflow;
- ``other``: bob, another scientist, not listed on the restricted workflow;
- ``developer``: erin, another developer, not listed either;
- ``admin``;
- ``anonymous``: no token, and a token that is not one (both must get 401).

So the execution's owner is ``scientist``: ``owner`` (the workflow's developer) is a stranger to it.
Every refusal must come in the API's one error body, with the code that goes with its status.
"""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.core.db import make_engine, make_session_factory
from gateway.persistence.models import Deployment, DeploymentState, User
from hpcwaas.settings import Settings
from hpcwaas.stack.info import SiteInfo
from tests.fixtures.gateway import Person, error_of, registered_site

EXAMPLES = Path(__file__).resolve().parents[3] / "tosca" / "examples"
ROUTERS = ("gateway.api.routes.workflows", "gateway.api.routes.deployments", "gateway.api.routes.executions")
ROLES = ("owner", "scientist", "other", "developer", "admin", "anonymous")
LISTED, UNLISTED = "listed", "unlisted"  # 200, and the subject is (not) in the list
Expect = int | str
Row = tuple[Expect, Expect, Expect, Expect, Expect, Expect]


def same(row: Row) -> dict[str, Row]:
    return {"public": row, "restricted": row}


#                                              owner     scientist other     developer admin     anonymous
MATRIX: dict[tuple[str, str], dict[str, Row]] = {
    # Registering: developers and admins; the name of someone else's workflow is taken (409).
    ("POST", "/workflows"): same((200, 403, 403, 409, 200, 401)),
    ("POST", "/workflows/upload"): same((200, 403, 403, 409, 200, 401)),
    ("GET", "/workflows"): {
        "public": (LISTED, LISTED, LISTED, LISTED, LISTED, 401),
        "restricted": (LISTED, LISTED, UNLISTED, UNLISTED, LISTED, 401)},
    ("GET", "/workflows/{ref}"): {
        "public": (200, 200, 200, 200, 200, 401),
        "restricted": (200, 200, 404, 404, 200, 401)},
    ("GET", "/workflows/{ref}/versions"): {
        "public": (200, 200, 200, 200, 200, 401),
        "restricted": (200, 200, 404, 404, 200, 401)},
    ("GET", "/workflows/{ref}/versions/{number}"): {
        "public": (200, 200, 200, 200, 200, 401),
        "restricted": (200, 200, 404, 404, 200, 401)},
    ("PATCH", "/workflows/{ref}"): {
        "public": (200, 403, 403, 403, 200, 401),
        "restricted": (200, 403, 404, 404, 200, 401)},
    # Invoking: anyone who may see the workflow, with their own key.
    ("POST", "/workflows/{ref}/executions"): {
        "public": (202, 202, 202, 202, 202, 401),
        "restricted": (202, 202, 404, 404, 202, 401)},
    # Executions: the owner and admins only (the workflow's developer included among the others).
    ("GET", "/executions"): same((UNLISTED, LISTED, UNLISTED, UNLISTED, LISTED, 401)),
    ("GET", "/executions/{execution_id}"): same((404, 200, 404, 404, 200, 401)),
    ("DELETE", "/executions/{execution_id}"): same((404, 202, 404, 404, 202, 401)),
    # Resuming: the owner and admins; this one was cancelled before any step ran, so nothing to resume.
    ("POST", "/executions/{execution_id}/resume"): same((404, 409, 404, 404, 409, 401)),
    ("GET", "/executions/{execution_id}/outputs"): same((404, 200, 404, 404, 200, 401)),
    ("GET", "/executions/{execution_id}/provenance"): same((404, 200, 404, 404, 200, 401)),
    ("GET", "/executions/{execution_id}/logs"): same((404, 200, 404, 404, 200, 401)),
    ("GET", "/executions/{execution_id}/logs/stream"): same((404, 200, 404, 404, 200, 401)),
    # Deployments: deploying needs the developer role and sight of the workflow; following a
    # deployment needs sight of its workflow; undeploying is for its owner and admins.
    ("POST", "/deployments"): {
        "public": (202, 403, 403, 202, 202, 401),
        "restricted": (202, 403, 403, 404, 202, 401)},
    ("GET", "/deployments"): {
        "public": (LISTED, LISTED, LISTED, LISTED, LISTED, 401),
        "restricted": (LISTED, LISTED, UNLISTED, UNLISTED, LISTED, 401)},
    ("GET", "/deployments/{deployment_id}"): {
        "public": (200, 200, 200, 200, 200, 401),
        "restricted": (200, 200, 404, 404, 200, 401)},
    ("DELETE", "/deployments/{deployment_id}"): {
        "public": (202, 403, 403, 403, 202, 401),
        "restricted": (202, 403, 404, 404, 202, 401)},
    ("GET", "/deployments/{deployment_id}/logs"): {
        "public": (200, 200, 200, 200, 200, 401),
        "restricted": (200, 200, 404, 404, 200, 401)},
}

CODES = {401: "not_authenticated", 403: "permission_denied", 404: "not_found", 409: "conflict"}


@dataclass
class World:
    """A workflow (two versions: folder and CSAR), a deployment marked deployed, a finished execution."""

    visibility: str
    name: str
    folder: Path
    csar: bytes
    workflow_id: str
    version_id: str
    site_id: str
    deployment_id: str
    execution_id: str
    cast: dict[str, Person]
    keys: dict[str, str]  # role -> id of that person's own SSH key
    settings: Settings
    client: TestClient

    def insert_deployment(self) -> str:
        """A fresh deployment of dave's, marked deployed, straight into the database."""
        engine = make_engine(self.settings.effective_database_url)
        try:
            with make_session_factory(engine)() as db:
                deployment = Deployment(workflow_id=self.workflow_id, version_id=self.version_id,
                                        site_id=self.site_id, owner_id=self.cast["owner"].id,
                                        ssh_key_id=self.keys["owner"], login="sciuser2", inputs={"base_dir": "/tmp/x"},
                                        state=DeploymentState.DEPLOYED, target="deployed")
                db.add(deployment)
                db.commit()
                return deployment.id
        finally:
            engine.dispose()

    def invoke(self, role: str = "scientist", deployment: str | None = None) -> str:
        body: dict[str, Any] = {"inputs": {"who": "ada"}, "ssh_key": self.keys[role]}
        if deployment is not None:
            body["deployment"] = deployment
        resp = self.cast[role].post(f"/workflows/{self.name}/executions", json=body)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])


def _person(admin: Person, client: TestClient, username: str, role: str) -> Person:
    """A user made through the admin API (reused when this database already has it), with a fresh token."""
    made = admin.post("/users", json={"username": username, "role": role})
    assert made.status_code in (201, 409), made.text
    user = admin.get(f"/users/{username}").json()
    token = admin.post(f"/users/{user['id']}/tokens", json={"name": "permissions"})
    assert token.status_code == 201, token.text
    return Person(username, user["id"], user["role"], token.json()["token"], client)


@pytest.fixture(scope="module")
def cast(people: dict[str, Person], client: TestClient) -> dict[str, Person]:
    return {"owner": people["dave"], "scientist": people["alice"], "other": people["bob"],
            "developer": _person(people["admin"], client, "erin", "developer"), "admin": people["admin"]}


def _csar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder))
    return buf.getvalue()


@pytest.fixture(scope="module", params=["public", "restricted"])
def world(request: pytest.FixtureRequest, cast: dict[str, Person], settings: Settings, site: SiteInfo,
          client: TestClient) -> Iterator[World]:
    visibility: str = request.param
    admin, dave = cast["admin"], cast["owner"]
    registered_site(admin, site)
    name = f"perm-{visibility[:3]}-{uuid.uuid4().hex[:8]}"
    folder = settings.registry_roots[0] / name
    shutil.copytree(EXAMPLES / "hello-local", folder)
    mode = {"mode": "public"} if visibility == "public" else {"mode": "restricted", "users": ["alice"]}
    registered = dave.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(folder)},
                                               "visibility": mode})
    assert registered.status_code == 201, registered.text
    csar = _csar(folder)
    uploaded = dave.post("/workflows/upload", data={"name": name}, files={"file": ("w.csar", csar, "application/zip")})
    assert uploaded.status_code == 201 and uploaded.json()["version"]["number"] == 2, uploaded.text
    keys = {}
    for role, person in cast.items():
        key = person.post("/ssh_keys", json={"login": "sciuser1" if role == "scientist" else "sciuser2"})
        assert key.status_code == 201, key.text
        keys[role] = key.json()["id"]
    w = World(visibility, name, folder, csar, registered.json()["workflow"]["id"],
              registered.json()["version"]["id"], admin.get("/sites/local").json()["id"], "", "", cast, keys,
              settings, client)
    w.deployment_id = w.insert_deployment()
    w.execution_id = w.invoke(deployment=w.deployment_id)
    # Finished, so that log long-polls and streams end at once for those allowed to follow it.
    assert cast["scientist"].delete(f"/executions/{w.execution_id}").json()["state"] == "cancelled"
    yield w


# What each route is asked, by whom: (method, url, keyword arguments, check after the call).
Call = tuple[str, str, dict[str, Any], Callable[[httpx.Response], None] | None]


def _register(w: World, role: str) -> Call:
    return "POST", "/workflows", {"json": {"name": w.name, "source": {"kind": "folder", "path": str(w.folder)}}}, None


def _upload(w: World, role: str) -> Call:
    return "POST", "/workflows/upload", {"data": {"name": w.name},
                                         "files": {"file": ("w.csar", w.csar, "application/zip")}}, None


def _patch(w: World, role: str) -> Call:
    before = w.cast["owner"].get(f"/workflows/{w.name}").json()

    def unchanged_unless_allowed(resp: httpx.Response) -> None:
        after = w.cast["owner"].get(f"/workflows/{w.name}").json()
        if resp.status_code != 200:
            assert after["description"] == before["description"], "a refused PATCH changed the workflow"
        else:
            assert after["description"] == f"set by {role}"

    return "PATCH", f"/workflows/{w.name}", {"json": {"description": f"set by {role}"}}, unchanged_unless_allowed


def _invoke(w: World, role: str) -> Call:
    key = w.keys.get(role, w.keys["scientist"])
    return ("POST", f"/workflows/{w.name}/executions",
            {"json": {"inputs": {"who": "ada"}, "ssh_key": key, "deployment": w.deployment_id}}, None)


def _cancel(w: World, role: str) -> Call:
    fresh = w.invoke(deployment=w.deployment_id)
    alice = w.cast["scientist"]

    def cancelled_only_if_allowed(resp: httpx.Response) -> None:
        state = alice.get(f"/executions/{fresh}").json()["state"]
        assert state == ("cancelled" if resp.status_code == 202 else "pending"), state

    return "DELETE", f"/executions/{fresh}", {}, cancelled_only_if_allowed


def _resume(w: World, role: str) -> Call:
    alice = w.cast["scientist"]

    def still_cancelled(resp: httpx.Response) -> None:
        assert alice.get(f"/executions/{w.execution_id}").json()["state"] == "cancelled"

    return "POST", f"/executions/{w.execution_id}/resume", {}, still_cancelled


def _deploy(w: World, role: str) -> Call:
    key = w.keys.get(role, w.keys["owner"])
    return ("POST", "/deployments", {"json": {"workflow": w.name, "version": 1, "site": "local", "ssh_key": key,
                                              "inputs": {"base_dir": "/tmp/x"}}}, None)


def _undeploy(w: World, role: str) -> Call:
    fresh = w.insert_deployment()
    dave = w.cast["owner"]

    def undeployed_only_if_allowed(resp: httpx.Response) -> None:
        target = dave.get(f"/deployments/{fresh}").json()["target"]
        assert target == ("undeployed" if resp.status_code == 202 else "deployed"), target

    return "DELETE", f"/deployments/{fresh}", {}, undeployed_only_if_allowed


def _get(template: str) -> Callable[[World, str], Call]:
    def call(w: World, role: str) -> Call:
        url = template.format(ref=w.name, number=2, execution_id=w.execution_id, deployment_id=w.deployment_id)
        params = {"all": "true"} if url == "/executions" else {}
        return "GET", url, {"params": params}, None
    return call


CALLS: dict[tuple[str, str], Callable[[World, str], Call]] = {
    ("POST", "/workflows"): _register,
    ("POST", "/workflows/upload"): _upload,
    ("PATCH", "/workflows/{ref}"): _patch,
    ("POST", "/workflows/{ref}/executions"): _invoke,
    ("DELETE", "/executions/{execution_id}"): _cancel,
    ("POST", "/executions/{execution_id}/resume"): _resume,
    ("POST", "/deployments"): _deploy,
    ("DELETE", "/deployments/{deployment_id}"): _undeploy,
}
for _method, _path in MATRIX:
    if _method == "GET":
        CALLS[(_method, _path)] = _get(_path)

# The subject a listing must (not) show, per listing route.
SUBJECT: dict[str, Callable[[World], str]] = {
    "/workflows": lambda w: w.workflow_id,
    "/executions": lambda w: w.execution_id,
    "/deployments": lambda w: w.deployment_id,
}


def _send(w: World, role: str, method: str, url: str, kwargs: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return w.client.request(method, url, headers=headers, **kwargs)


def _problem(resp: httpx.Response, expected: Expect, w: World, path: str) -> str | None:
    """What is wrong with the response, or None."""
    want = 200 if expected in (LISTED, UNLISTED) else expected
    if resp.status_code != want:
        return f"status {resp.status_code}, expected {want}: {resp.text[:300]}"
    if expected in (LISTED, UNLISTED):
        ids = [item["id"] for item in resp.json()]
        if (SUBJECT[path](w) in ids) != (expected == LISTED):
            return f"the subject is {'not ' if expected == LISTED else ''}in the list"
    if resp.status_code >= 400:
        try:
            err = error_of(resp)
        except (AssertionError, ValueError) as exc:
            return f"not the API's error body: {exc}"
        if err["code"] != CODES[resp.status_code]:
            return f"error code {err['code']!r}, expected {CODES[resp.status_code]!r}"
        if not err.get("request_id") or not err["message"]:
            return f"error without message or request id: {err}"
        if resp.status_code == 401 and resp.headers.get("WWW-Authenticate") != "Bearer":
            return "401 without 'WWW-Authenticate: Bearer'"
    return None


def _api_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute of the app with its full path, through included routers.

    FastAPI 0.16x keeps an included router as one entry of ``app.routes`` (with the router in
    ``original_router``); older versions copied its routes in. Both are walked.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            extra = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _api_routes(route.original_router.routes, prefix + extra)


def test_every_route_has_a_row(client: TestClient) -> None:
    app = client.app
    routes = {(method, path) for path, route in _api_routes(app.routes)  # type: ignore[attr-defined]
              if route.endpoint.__module__ in ROUTERS for method in route.methods}
    assert routes, "no route found: were the routers renamed?"
    # The published spec agrees: nothing of these routers is served that the walk above missed.
    spec = app.openapi()  # type: ignore[attr-defined]
    tags = {"workflows", "deployments", "executions"}
    published = {(method.upper(), path) for path, ops in spec["paths"].items() for method, op in ops.items()
                 if set(op.get("tags", ())) & tags}
    assert published == routes
    assert routes - set(MATRIX) == set(), "routes without a row in the permission matrix"
    assert set(MATRIX) - routes == set(), "rows for routes that no longer exist"
    assert set(CALLS) == set(MATRIX)


@pytest.mark.parametrize("route", sorted(MATRIX), ids=lambda r: f"{r[0]} {r[1]}")
def test_permission_matrix(world: World, route: tuple[str, str]) -> None:
    expected = dict(zip(ROLES, MATRIX[route][world.visibility], strict=True))
    problems = []
    for role in ROLES:
        if role == "anonymous":
            attempts: list[tuple[str, str | None]] = [("no token", None), ("a made-up token", "hpcw_" + "x" * 40)]
        else:
            attempts = [("", world.cast[role].token)]
        for how, token in attempts:
            method, url, kwargs, after = CALLS[route](world, role)
            resp = _send(world, role, method, url, kwargs, token)
            problem = _problem(resp, expected[role], world, route[1])
            if problem is None and after is not None:
                try:
                    after(resp)
                except AssertionError as exc:
                    problem = f"side effect: {exc}"
            if problem:
                problems.append(f"{role}{' with ' + how if how else ''}: {problem}")
    assert not problems, f"{route[0]} {route[1]} on a {world.visibility} workflow:\n" + "\n".join(problems)


def test_restricted_to_a_group(cast: dict[str, Person], world: World, client: TestClient,
                               settings: Settings) -> None:
    """A workflow restricted to a group: its members see and invoke it, others do not."""
    if world.visibility != "restricted":
        pytest.skip("one run is enough")
    admin, dave = cast["admin"], cast["owner"]
    member = _person(admin, client, "gina", "scientist")
    engine = make_engine(settings.effective_database_url)
    try:
        with make_session_factory(engine)() as db:
            user = db.get(User, member.id)
            assert user is not None
            user.groups = ["lab-a"]
            db.commit()
    finally:
        engine.dispose()
    patched = dave.patch(f"/workflows/{world.name}",
                         json={"visibility": {"mode": "restricted", "users": ["alice"], "groups": ["lab-a"]}})
    assert patched.status_code == 200, patched.text
    try:
        key = member.post("/ssh_keys", json={"login": "sciuser1"}).json()["id"]
        assert member.get(f"/workflows/{world.name}").status_code == 200
        assert world.workflow_id in [w["id"] for w in member.get("/workflows").json()]
        assert member.get(f"/deployments/{world.deployment_id}").status_code == 200
        invoked = member.post(f"/workflows/{world.name}/executions",
                              json={"inputs": {"who": "ada"}, "ssh_key": key, "deployment": world.deployment_id})
        assert invoked.status_code == 202, invoked.text
        # Members of the group see their own execution, not alice's.
        assert member.get(f"/executions/{world.execution_id}").status_code == 404
        assert cast["other"].get(f"/workflows/{world.name}").status_code == 404
    finally:
        dave.patch(f"/workflows/{world.name}", json={"visibility": {"mode": "restricted", "users": ["alice"]}})


HIDDEN_ROUTES = sorted(route for route, rows in MATRIX.items() if 404 in rows["restricted"] and "{" in route[1])


@pytest.mark.parametrize("route", HIDDEN_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_hidden_is_reported_like_absent(world: World, route: tuple[str, str]) -> None:
    """A 404 for something hidden says no more than a 404 for something that does not exist."""
    if world.visibility != "restricted":
        pytest.skip("the restricted workflow hides things")
    role = ROLES[MATRIX[route]["restricted"].index(404)]
    person = world.cast[role]
    method, url, kwargs, _ = CALLS[route](world, role)
    made_up = "nosuch" + uuid.uuid4().hex[:8]
    ids = {"{ref}", "{execution_id}", "{deployment_id}"}
    pairs = list(zip(route[1].split("/"), url.split("/"), strict=True))
    ref = next(part for template, part in pairs if template in ids)
    ghost_url = "/".join(made_up if template in ids else part for template, part in pairs)
    hidden = _send(world, role, method, url, kwargs, person.token)
    absent = _send(world, role, method, ghost_url, kwargs, person.token)
    assert hidden.status_code == absent.status_code == 404, (hidden.text, absent.text)

    def shape(resp: httpx.Response, ref: str) -> dict[str, Any]:
        err = dict(error_of(resp))
        err.pop("request_id")
        text = resp.text
        for secret in (world.workflow_id, world.name) if ref != world.name else ():
            assert secret not in text, f"the 404 names the hidden workflow: {text}"
        return {k: (v.replace(ref, "REF") if isinstance(v, str) else v) for k, v in err.items()}

    assert shape(hidden, ref) == shape(absent, made_up)
