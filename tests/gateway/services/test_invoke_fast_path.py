"""The one-query invoke path answers exactly as the full path does, over a matrix of cases.

``runs.accept_invocation`` checks an ordinary invocation with one query and hands anything else
to ``new_execution`` as ``authenticate``'s user. Each case here runs both on the same data (the
tokens' last use reset between them, since authenticating may record it) and compares what they
return or raise, message, hint and context included.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.core.db import make_engine, make_session_factory
from gateway.core.security import hash_token
from gateway.persistence.models import (
    ApiToken,
    Deployment,
    DeploymentState,
    Role,
    Site,
    SSHKey,
    User,
    Visibility,
    Workflow,
    WorkflowVersion,
    utcnow,
)
from gateway.schemas.runs import ExecutionCreate
from gateway.services import runs
from gateway.services import users as user_service
from hpcwaas.errors import HpcwaasError
from hpcwaas.stack.info import StackInfo
from tests.fixtures.gateway import fresh_database

NOW = utcnow()
EXECUTE = {"execute": {"inputs": {"who": {"type": "string", "default": "world",
                                          "constraints": [{"min_length": 2}]},
                                  "times": {"type": "integer", "required": True}}},
           "other": {"inputs": {}}}
# A later version's execute workflow takes one more input (and has no "other").
EXECUTE_V2 = {"execute": {"inputs": {**EXECUTE["execute"]["inputs"], "extra": {"type": "string", "default": "x"}}}}
# token plaintext -> (user, revoked_at, expires_at, how long ago it was last used); the last use is
# set again before each call, relative to then (the module may be imported long before it runs).
TOKENS: dict[str, tuple[str, datetime | None, datetime, timedelta | None]] = {
    "alice-fresh": ("alice", None, NOW + timedelta(days=1), timedelta(0)),
    "alice-never-used": ("alice", None, NOW + timedelta(days=1), None),
    "alice-used-an-hour-ago": ("alice", None, NOW + timedelta(days=1), timedelta(hours=1)),
    "alice-revoked": ("alice", NOW - timedelta(hours=1), NOW + timedelta(days=1), timedelta(0)),
    "alice-expired": ("alice", None, NOW - timedelta(seconds=1), timedelta(0)),
    "bob-fresh": ("bob", None, NOW + timedelta(days=1), timedelta(0)),
    "carol-in-group": ("carol", None, NOW + timedelta(days=1), timedelta(0)),
    "dave-owner": ("dave", None, NOW + timedelta(days=1), timedelta(0)),
    "root-admin": ("root", None, NOW + timedelta(days=1), timedelta(0)),
    "eve-disabled": ("eve", None, NOW + timedelta(days=1), timedelta(0)),
    "unknown": ("", None, NOW, None),
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, stack: StackInfo) -> Iterator[Session]:
    """A migrated database of each kind, holding the world below."""
    with fresh_database(request.param, stack, tmp_path_factory.mktemp("fast-path")) as url:
        engine = make_engine(url)
        with make_session_factory(engine)() as session:
            _world(session)
            yield session
        engine.dispose()


def _world(db: Session) -> None:
    users = {name: User(id=f"u-{name}", username=name, role=role, groups=groups, disabled=name == "eve")
             for name, role, groups in [("alice", Role.SCIENTIST, []), ("bob", Role.SCIENTIST, []),
                                        ("carol", Role.SCIENTIST, ["lab"]), ("dave", Role.DEVELOPER, []),
                                        ("root", Role.ADMIN, []), ("eve", Role.SCIENTIST, [])]}
    db.add_all(users.values())
    db.flush()  # these tables have foreign keys but few relationships to order the inserts by
    for plain, (owner, revoked, expires, _) in TOKENS.items():
        if owner:
            db.add(ApiToken(id=f"t-{plain}", user_id=users[owner].id, name=plain, prefix=plain[:8],
                            token_hash=hash_token(plain), expires_at=expires, revoked_at=revoked))
    sites = [Site(id=f"s-{n}", name=n, login_host="h", work_dir="/w", host_key="k", host_key_fingerprint="f")
             for n in ("north", "south")]
    db.add_all(sites)
    # A key with a login for everyone (eve's account is disabled), and one without for alice.
    db.add_all([SSHKey(id=f"k-{name}", user_id=f"u-{name}", name="a", key_type="ed25519", public_key="p",
                       fingerprint="f", login=f"sci-{name}", origin="generated") for name in users])
    db.add(SSHKey(id="k-alice-nologin", user_id="u-alice", name="b", key_type="ed25519", public_key="p",
                  fingerprint="f", login=None, origin="generated"))
    deployed, deploying = DeploymentState.DEPLOYED, DeploymentState.DEPLOYING
    workflows = {
        # name -> (visibility, allowed users, allowed groups,
        #          deployments: (state, target, site, hours old, version number))
        "public": (Visibility.PUBLIC, [], [], [(deployed, "deployed", "north", 2, 1),
                                                (deployed, "deployed", "south", 1, 2)]),
        "for-alice": (Visibility.RESTRICTED, ["alice"], [], [(deployed, "deployed", "north", 1, 1)]),
        "for-lab": (Visibility.RESTRICTED, [], ["lab"], [(deployed, "deployed", "south", 1, 2)]),
        "undeploying": (Visibility.PUBLIC, [], [], [(deployed, "undeployed", "north", 1, 1)]),
        "installing": (Visibility.PUBLIC, [], [], [(deploying, "deployed", "north", 1, 1)]),
        "undeployed": (Visibility.PUBLIC, [], [], [(DeploymentState.UNDEPLOYED, "undeployed", "north", 1, 1),
                                                    (DeploymentState.FAILED, "deployed", "north", 2, 1)]),
        # Two deployments made at the same instant, of different versions: the larger id wins.
        "tied": (Visibility.PUBLIC, [], [], [(deployed, "deployed", "north", 1, 2),
                                              (deployed, "deployed", "south", 1, 1)]),
        "w-public": (Visibility.PUBLIC, [], [], []),  # named like the id of "public": the id wins
    }
    db.flush()
    for name, (visibility, allowed, groups, deployments) in workflows.items():
        db.add(Workflow(id=f"w-{name}", name=name, owner_id="u-dave", visibility=visibility,
                        allowed_users=allowed, allowed_groups=groups))
        db.flush()
        for number, declared in ((1, EXECUTE), (2, EXECUTE_V2)):
            db.add(WorkflowVersion(id=f"v-{name}-{number}", workflow_id=f"w-{name}", number=number,
                                   digest=f"sha256:{number}", source={}, bundle="/b", entry="service.yaml",
                                   workflows=declared))
        db.flush()
        for i, (state, target, site, age, number) in enumerate(deployments):
            db.add(Deployment(id=f"d-{name}-{i}", workflow_id=f"w-{name}", version_id=f"v-{name}-{number}",
                              site_id=f"s-{site}", owner_id="u-dave", ssh_key_id="k", login="dev", state=state,
                              target=target, created_at=NOW - timedelta(hours=age)))
    db.commit()


def _reset_tokens(db: Session, *tokens: str) -> None:
    """Give the tokens (all by default) their last use of TOKENS again."""
    now = utcnow()
    for plain in tokens or TOKENS:
        owner, _, _, ago = TOKENS[plain]
        if owner:
            used = None if ago is None else now - ago
            db.execute(update(ApiToken).where(ApiToken.id == f"t-{plain}").values(last_used_at=used))
    db.commit()
    db.expire_all()


def _outcome(call: Any) -> tuple[Any, ...] | None:
    """What a call raised or the execution it returned, comparably (None if it returned None)."""
    try:
        e = call()
    except HpcwaasError as exc:
        return ("raised", type(exc).__name__, exc.message, exc.hint, exc.context)
    if e is None:
        return None
    return ("accepted", e.workflow_id, e.deployment_id, e.owner_id, e.ssh_key_id, e.login, e.workflow_name,
            e.tosca_workflow, e.inputs, e.state)


def _full_path(db: Session, token: str, ref: str, data: ExecutionCreate) -> Any:
    return runs.new_execution(db, user_service.authenticate(db, token), ref, data)


REFS = ["public", "w-public", "for-alice", "w-for-alice", "for-lab", "undeploying", "installing", "undeployed",
        "tied", "nope"]
BODIES: list[dict[str, Any]] = [
    {"inputs": {"times": 2}, "ssh_key": "k-alice"},
    {"inputs": {"times": 2, "who": "ada"}, "ssh_key": "k-alice", "login": "other"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice-nologin"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice-nologin", "login": "sciuser9"},
    *({"inputs": {"times": 2}, "ssh_key": f"k-{name}"} for name in ("bob", "carol", "dave", "root", "eve")),
    {"inputs": {"times": 2, "extra": "y"}, "ssh_key": "k-alice"},
    {"inputs": {"times": 2, "extra": "y"}, "ssh_key": "k-carol"},
    {"inputs": {"times": 2}, "ssh_key": "k-none"},
    {"inputs": {}, "ssh_key": "k-alice"},
    {"inputs": {"times": "2"}, "ssh_key": "k-alice"},
    {"inputs": {"times": 2, "who": "a"}, "ssh_key": "k-alice"},
    {"inputs": {"times": 2, "typo": 1}, "ssh_key": "k-alice"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice", "tosca_workflow": "other"},
    {"inputs": {}, "ssh_key": "k-alice", "tosca_workflow": "other"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice", "tosca_workflow": "missing"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice", "site": "south"},
    {"inputs": {"times": 2}, "ssh_key": "k-alice", "deployment": "d-public-0"},
]


def test_fast_path_answers_as_the_full_path(db: Session) -> None:
    taken = 0
    for token, ref, body in itertools.product(TOKENS, REFS, BODIES):
        data = ExecutionCreate.model_validate(body)
        _reset_tokens(db, token)
        fast = _outcome(lambda: runs._fast_execution(db, token, ref, data))  # noqa: B023
        _reset_tokens(db, token)
        both = _outcome(lambda: runs.accept_invocation(db, token, ref, data))  # noqa: B023
        _reset_tokens(db, token)
        full = _outcome(lambda: _full_path(db, token, ref, data))  # noqa: B023
        assert both == full is not None, (token, ref, body)
        if fast is not None:
            taken += fast[0] == "accepted"
            assert fast == full, (token, ref, body)
    # The fast path does take the ordinary invocations: it is not trivially never used.
    assert taken >= 15, taken


def test_fast_path_takes_the_ordinary_cases(db: Session) -> None:
    _reset_tokens(db)

    def fast(token: str, ref: str, key: str, **extra: Any) -> tuple[str, str, str] | None:
        data = ExecutionCreate.model_validate({"inputs": {"times": 2, **extra}, "ssh_key": key})
        execution = runs._fast_execution(db, token, ref, data)
        assert not (db.new or db.dirty), "the fast path writes nothing"
        return None if execution is None else (execution.deployment_id, execution.login, execution.owner_id)

    assert fast("alice-fresh", "public", "k-alice") == ("d-public-1", "sci-alice", "u-alice")
    assert fast("alice-fresh", "public", "k-alice", extra="y") == ("d-public-1", "sci-alice", "u-alice")  # v2
    assert fast("alice-fresh", "tied", "k-alice") == ("d-tied-1", "sci-alice", "u-alice")
    # Each way of seeing a restricted workflow: listed user, group member, owner, admin.
    assert fast("alice-fresh", "for-alice", "k-alice") == ("d-for-alice-0", "sci-alice", "u-alice")
    assert fast("carol-in-group", "for-lab", "k-carol") == ("d-for-lab-0", "sci-carol", "u-carol")
    assert fast("dave-owner", "for-alice", "k-dave") == ("d-for-alice-0", "sci-dave", "u-dave")
    assert fast("root-admin", "for-lab", "k-root") == ("d-for-lab-0", "sci-root", "u-root")
    # Anything that needs a write or an error message goes the full way.
    assert fast("bob-fresh", "for-alice", "k-bob") is None
    assert fast("carol-in-group", "for-alice", "k-carol") is None
    assert fast("eve-disabled", "public", "k-eve") is None
    assert fast("alice-revoked", "public", "k-alice") is None
    assert fast("alice-expired", "public", "k-alice") is None
    assert fast("alice-never-used", "public", "k-alice") is None
    assert fast("alice-used-an-hour-ago", "public", "k-alice") is None
    assert fast("alice-fresh", "public", "k-bob") is None
    assert fast("alice-fresh", "undeploying", "k-alice") is None


def test_full_path_still_records_the_tokens_last_use(db: Session) -> None:
    _reset_tokens(db)
    data = ExecutionCreate.model_validate({"inputs": {"times": 2}, "ssh_key": "k-alice"})
    runs.accept_invocation(db, "alice-never-used", "public", data)
    db.expire_all()
    assert db.get(ApiToken, "t-alice-never-used").last_used_at is not None  # type: ignore[union-attr]
