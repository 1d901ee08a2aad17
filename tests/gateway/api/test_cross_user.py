"""A user acts only as themselves: every place a request can name a key or a site account, and
every executor the engine has, refuses another user's before anything connects (the site's
sshd log shows no login with the victim's key)."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.credentials import CredentialResolver, StaticCredentialProvider
from deployer.errors import OperationError
from deployer.executors import HostSpec, OperationRequest
from deployer.model import OperationDef
from gateway.engine.executors import ImageTransferExecutor, StageInExecutor, StageOutExecutor
from hpcwaas.settings import Settings
from hpcwaas.ssh import SiteEndpoint
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.fixtures.gateway import Person, error_of
from tests.gateway.api.test_executions import _deployed

pytestmark = pytest.mark.site


@pytest.fixture
def victim(people: dict[str, Person], site: SiteInfo, stack: StackInfo) -> Any:
    """Alice's key, authorised for her site account; the sshd log's size before the test."""
    key = people["alice"].post("/ssh_keys", json={"login": "sciuser1"}).json()
    authorize_key("sciuser1", key["public_key"])
    log = stack.stack_dir / "sshd" / "sshd.log"
    yield {"key": key, "log": log, "since": log.stat().st_size}
    revoke_key("sciuser1", key["public_key"])


def _logins_with(victim: Any) -> list[str]:
    text = victim["log"].read_bytes()[victim["since"]:].decode(errors="replace")
    return [line for line in text.splitlines() if victim["key"]["fingerprint"] in line]


def test_no_request_field_names_another_users_key_or_account(people: dict[str, Person], settings: Settings,
                                                             site: SiteInfo, victim: Any) -> None:
    bob = people["bob"]
    deployed = _deployed(people, settings, site)
    assert people["dave"].patch(f"/workflows/{deployed['name']}", json={"visibility": {"mode": "public"}}
                                ).status_code == 200
    bob_key = bob.post("/ssh_keys", json={"login": "sciuser2"}).json()["id"]
    alice_key = victim["key"]["id"]
    script = "#!/bin/sh\nid -un\n"
    not_found = [  # another user's key id, in every request field that takes one
        ("POST", "/sites/local/info", {"ssh_key": alice_key}),
        ("POST", f"/ssh_keys/{alice_key}/check", {"site": "local"}),
        ("POST", "/sites/local/jobs", {"ssh_key": alice_key, "script": script}),
        ("POST", "/pipelines/stage_in/runs", {"ssh_key": alice_key, "source": "https://8.8.8.8/x",
                                              "target": "sftp://local/x"}),
        ("POST", f"/workflows/{deployed['name']}/executions", {"ssh_key": alice_key}),
        ("POST", "/deployments", {"workflow": deployed["name"], "site": "local", "ssh_key": alice_key}),
    ]
    for method, url, body in not_found:
        who = people["dave"] if url == "/deployments" else bob
        resp = who.http.request(method, url, json=body, headers=who._h(None))
        assert resp.status_code == 404, (url, resp.text)
    for login in ("sciuser1", "root"):  # another site account than the key's
        for url, body in [("/sites/local/info", {"ssh_key": bob_key, "login": login}),
                          ("/sites/local/jobs", {"ssh_key": bob_key, "login": login, "script": script}),
                          ("/pipelines/stage_in/runs", {"ssh_key": bob_key, "login": login,
                                                        "source": "https://8.8.8.8/x", "target": "sftp://local/x"}),
                          (f"/workflows/{deployed['name']}/executions", {"ssh_key": bob_key, "login": login})]:
            resp = bob.post(url, json=body)
            assert resp.status_code == 422, (url, login, resp.text)
            assert error_of(resp)["details"]["field"] == "login" and "not the account of this key" in \
                error_of(resp)["message"]
    # Inputs that would carry a credential: the gateway binds them, a request cannot.
    ref = f"{people['alice'].id}/{alice_key}"
    invoke = bob.post(f"/workflows/{deployed['name']}/executions",
                      json={"ssh_key": bob_key, "inputs": {"run_credential": ref}})
    assert invoke.status_code == 422, invoke.text
    assert _logins_with(victim) == []


@pytest.mark.parametrize("executor", [StageInExecutor, StageOutExecutor, ImageTransferExecutor])
def test_the_pipeline_executors_refuse_a_foreign_credential(executor: type, settings: Settings, site: SiteInfo
                                                            ) -> None:
    """The stage-in, stage-out and image-transfer executors take the run's key through the same
    resolver: a host whose credential is another user's is refused before any pipeline starts."""
    resolver = CredentialResolver(StaticCredentialProvider({}), "bob")
    request = OperationRequest(
        deployment_id="d1", run_id="r1", node="stage", op=OperationDef("Standard", "create", None),
        inputs={"dataset": "x", "path": "in", "image_file": "i", "target_path": "t"},
        host=HostSpec(local=False, endpoint=SiteEndpoint(site.host, site.port, site.host_key), username="sciuser2",
                      credential="alice/k1", work_dir="/home/sciuser2/w"),
        credentials=resolver, context={"user_id": "bob", "site": "local"})
    with pytest.raises(OperationError, match="does not belong to the user this run acts for"):
        executor(None, settings, None).request_for(request)
