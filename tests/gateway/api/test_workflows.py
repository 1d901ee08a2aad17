"""The workflow registry: git, folder and CSAR sources; immutable versions; errors; visibility."""

from __future__ import annotations

import io
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

from hpcwaas.settings import Settings
from tests.fixtures.gateway import Person, error_of

EXAMPLES = Path(__file__).resolve().parents[3] / "tosca" / "examples"


@pytest.fixture
def workflow_dir(settings: Settings) -> Path:
    """A copy of the hello-local example under a registry root."""
    target = settings.registry_roots[0] / f"wf-{uuid.uuid4().hex[:8]}"
    shutil.copytree(EXAMPLES / "hello-local", target)
    return target


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                         env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                              "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(repo), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def test_register_a_folder_then_the_same_content_again(people: dict[str, Person], workflow_dir: Path,
                                                       unique: str) -> None:
    dave = people["dave"]
    body = {"name": f"hello-{unique}", "description": "says hello", "source": {"kind": "folder",
                                                                               "path": str(workflow_dir)}}
    first = dave.post("/workflows", json=body)
    assert first.status_code == 201, first.text
    out = first.json()
    assert out["created"] is True and out["version"]["number"] == 1
    assert out["version"]["digest"].startswith("sha256:")
    assert "execute" in out["version"]["workflows"]
    assert out["version"]["inputs"]["base_dir"]["required"] is True
    again = dave.post("/workflows", json=body)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["version"]["id"] == out["version"]["id"]
    (workflow_dir / "README").write_text("changed\n")
    second = dave.post("/workflows", json=body)
    assert second.status_code == 201 and second.json()["version"]["number"] == 2
    versions = people["alice"].get(f"/workflows/hello-{unique}/versions").json()
    assert [v["number"] for v in versions] == [1, 2]
    # What was validated is kept: changing the source later does not change version 1.
    v1 = people["alice"].get(f"/workflows/hello-{unique}/versions/1").json()
    assert v1["digest"] == out["version"]["digest"]


def test_register_from_git_with_ref_and_subpath(people: dict[str, Person], settings: Settings,
                                                unique: str) -> None:
    repo = settings.registry_roots[0] / f"repo-{unique}"
    shutil.copytree(EXAMPLES / "hello-local", repo / "workflows" / "hello")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "hello")
    sha = _git(repo, "rev-parse", "HEAD")
    _git(repo, "tag", "v1")
    resp = people["dave"].post("/workflows", json={
        "name": f"git-{unique}", "source": {"kind": "git", "url": f"file://{repo}", "ref": "v1",
                                             "subpath": "workflows/hello"}})
    assert resp.status_code == 201, resp.text
    version = resp.json()["version"]
    assert version["digest"] == f"git:{sha}:workflows/hello"
    assert version["source"]["commit"] == sha
    bad_ref = people["dave"].post("/workflows", json={
        "name": f"git-{unique}", "source": {"kind": "git", "url": str(repo), "ref": "--upload-pack=evil"}})
    assert bad_ref.status_code == 422 and error_of(bad_ref)["details"]["field"] == "source.ref"
    no_commit = people["dave"].post("/workflows", json={
        "name": f"git-{unique}", "source": {"kind": "git", "url": str(repo), "ref": "nope"}})
    assert no_commit.status_code == 422 and "nope" in error_of(no_commit)["message"]


def test_register_a_csar_upload(people: dict[str, Person], unique: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in (EXAMPLES / "hello-local").rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(EXAMPLES / "hello-local"))
    resp = people["dave"].post("/workflows/upload", data={"name": f"csar-{unique}"},
                               files={"file": ("hello.csar", buf.getvalue(), "application/zip")})
    assert resp.status_code == 201, resp.text
    assert resp.json()["version"]["source"]["kind"] == "csar"


def test_invalid_workflow_is_refused_with_file_and_line(people: dict[str, Person], settings: Settings,
                                                        unique: str) -> None:
    bad = settings.registry_roots[0] / f"bad-{unique}"
    bad.mkdir()
    (bad / "service.yaml").write_text(
        "tosca_definitions_version: tosca_simple_yaml_1_3\n"
        "topology_template:\n"
        "  node_templates:\n"
        "    job:\n"
        "      type: hpcwaas.nodes.NoSuchType\n"
    )
    resp = people["dave"].post("/workflows", json={"name": f"bad-{unique}",
                                                   "source": {"kind": "folder", "path": str(bad)}})
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert "NoSuchType" in err["message"]
    issue = err["details"]["issues"][0]
    assert issue["file"].endswith("service.yaml") and issue["line"] == 5
    assert people["dave"].get(f"/workflows/bad-{unique}").status_code == 404


def test_sources_outside_the_registry_roots_are_refused(people: dict[str, Person]) -> None:
    resp = people["dave"].post("/workflows", json={"name": "etc", "source": {"kind": "folder", "path": "/etc"}})
    assert resp.status_code == 422 and "registry root" in error_of(resp)["message"]


def test_scientists_cannot_register(people: dict[str, Person], workflow_dir: Path) -> None:
    resp = people["alice"].post("/workflows", json={"name": "mine", "source": {"kind": "folder",
                                                                                 "path": str(workflow_dir)}})
    assert resp.status_code == 403


def test_visibility_restricts_listing_and_showing(people: dict[str, Person], workflow_dir: Path,
                                                  unique: str) -> None:
    name = f"private-{unique}"
    resp = people["dave"].post("/workflows", json={
        "name": name, "source": {"kind": "folder", "path": str(workflow_dir)},
        "visibility": {"mode": "restricted", "users": ["alice"]}})
    assert resp.status_code == 201, resp.text
    assert name in [w["name"] for w in people["alice"].get("/workflows").json()]
    assert name not in [w["name"] for w in people["bob"].get("/workflows").json()]
    assert people["bob"].get(f"/workflows/{name}").status_code == 404
    assert people["admin"].get(f"/workflows/{name}").status_code == 200
    assert people["bob"].patch(f"/workflows/{name}", json={"description": "mine now"}).status_code == 404
    assert people["alice"].patch(f"/workflows/{name}", json={"description": "x"}).status_code == 403
    opened = people["dave"].patch(f"/workflows/{name}", json={"visibility": {"mode": "public"}})
    assert opened.status_code == 200
    assert people["bob"].get(f"/workflows/{name}").status_code == 200


def test_another_developer_cannot_add_versions_to_my_workflow(people: dict[str, Person], workflow_dir: Path,
                                                               unique: str, client) -> None:
    name = f"owned-{unique}"
    people["dave"].post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(workflow_dir)}})
    other = people["admin"].post("/users", json={"username": f"erin{unique}", "role": "developer"}).json()
    token = people["admin"].post(f"/users/{other['id']}/tokens", json={}).json()["token"]
    (workflow_dir / "x.txt").write_text("x")
    resp = client.post("/workflows", json={"name": name, "source": {"kind": "folder", "path": str(workflow_dir)}},
                       headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 409 and "belongs to someone else" in error_of(resp)["message"]


def test_a_secret_input_nobody_can_fill_is_refused(people: dict[str, Person], workflow_dir: Path,
                                                   unique: str) -> None:
    """Requests may not carry secret values, so a mandatory secret the gateway does not bind
    would make a version that can never run: refused at registration, with file and line."""
    service = workflow_dir / "service.yaml"
    text = service.read_text()
    secret = "api_token: {type: string, metadata: {hpcwaas.secret: true}}"
    service.write_text(text.replace("who: {type: string, default: world}",
                                    f"who: {{type: string, default: world}}\n        {secret}", 1))
    body = {"name": f"secret-{unique}", "source": {"kind": "folder", "path": str(workflow_dir)}}
    resp = people["dave"].post("/workflows", json=body)
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    assert "'api_token'" in err["message"] and "is secret and has no default" in err["message"]
    assert "run_credential" in err["hint"]
    issue = err["details"]["issues"][0]
    line = next(i for i, row in enumerate(service.read_text().splitlines(), 1) if "api_token" in row)
    assert issue["file"].endswith("service.yaml") and issue["line"] == line
    assert people["dave"].get(f"/workflows/secret-{unique}").status_code == 404
    # With a default (it lives in the immutable bundle) the engine has a value: accepted.
    service.write_text(text.replace("who: {type: string, default: world}",
                                    "who: {type: string, default: world}\n        api_token: {type: string, "
                                    "default: t0ken, metadata: {hpcwaas.secret: true}}", 1))
    assert people["dave"].post("/workflows", json=body).status_code == 201


@pytest.mark.parametrize("credential", ["'VICTIM/k1'", "{get_input: other_key}",
                                        "{concat: [{get_input: credential}, '']}"],
                         ids=["literal", "own-input", "expression"])
def test_a_site_credential_the_gateway_does_not_bind_is_refused(people: dict[str, Person], settings: Settings,
                                                                unique: str, credential: str) -> None:
    """A template names only the keys the gateway binds (the developer's and the invoking user's):
    another user's key id, written literally or passed as an ordinary input, is refused at
    registration with file, line and node, before anything could use it."""
    folder = settings.registry_roots[0] / f"cred-{unique}"
    shutil.copytree(EXAMPLES / "hello-site", folder)
    service = folder / "service.yaml"
    text = service.read_text().replace(
        "credential: {get_input: credential}", "credential: " + credential.replace("VICTIM", people["alice"].id))
    service.write_text(text.replace("partition: {type: string, default: debug}",
                                    "partition: {type: string, default: debug}\n    other_key: {type: string, "
                                    "required: false}"))
    resp = people["dave"].post("/workflows", json={"name": f"cred-{unique}",
                                                   "source": {"kind": "folder", "path": str(folder)}})
    assert resp.status_code == 422, resp.text
    err = error_of(resp)
    issue = err["details"]["issues"][0]
    assert issue["node"] == "site" and issue["field"] == "properties.credential"
    assert issue["file"].endswith("service.yaml") and issue["line"] == 18
    assert "{get_input: credential}" in err["message"] and "run_credential" in err["hint"]
    assert people["dave"].get(f"/workflows/cred-{unique}").status_code == 404


_HOLD_STAGING = """
import sys, time
from pathlib import Path
from gateway.services.workflows import _staging_folder
with _staging_folder(Path(sys.argv[1])) as folder:
    (folder / "bundle").mkdir()
    print(folder, flush=True)
    time.sleep(600)
"""


def test_a_registration_that_died_leaves_no_staging_folder(people: dict[str, Person], settings: Settings,
                                                          workflow_dir: Path, unique: str) -> None:
    """A gateway killed mid-registration (kill -9) leaves its staging folder; the next registration
    removes it, and never one a living registration holds."""
    import signal
    import sys

    from gateway.services.workflows import store_root

    root = store_root(settings)
    holders = [subprocess.Popen([sys.executable, "-c", _HOLD_STAGING, str(root)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    try:
        dead, alive = (Path(h.stdout.readline().strip()) for h in holders if h.stdout is not None)
        holders[0].send_signal(signal.SIGKILL)
        holders[0].wait(10)
        assert dead.is_dir() and dead.name.startswith(".staging-")
        resp = people["dave"].post("/workflows", json={"name": f"staged-{unique}", "source": {"kind": "folder",
                                                                                  "path": str(workflow_dir)}})
        assert resp.status_code == 201, resp.text
        assert not dead.exists(), "the dead registration's staging folder is still there"
        assert alive.is_dir(), "a registration in progress lost its staging folder"
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(10)
    assert [p.name for p in root.glob(".staging-*") if p != alive] == []
