"""Schemathesis against the gateway's whole OpenAPI spec, with every check: the document is the truth.

Every operation of ``/openapi.json`` gets generated requests (positive and negative data, from
its schema; the explicit-examples and generate phases of Hypothesis, a bounded number of examples
each) sent in-process to the ASGI app twice: with an admin's token (which passes every role check,
so requests reach the services) and with a scientist's (which exercises the refusals).

Checks: every check schemathesis has (``schemathesis.checks.CHECKS``), so also
- ``not_a_server_error``, with 503 accepted: it is the API's answer when a dependency is down,
  which the rules allow ("a clear 4xx or 503"). 500 and 502 fail the test.
- ``status_code_conformance``: every status answered is declared (the app declares the one error
  body for 400, 401, 403, 404, 409, 413, 422, 429, 502 and 503 on every operation).
- ``response_schema_conformance``, ``content_type_conformance``, ``response_headers_conformance``.
- ``negative_data_rejection``: a request the schema calls invalid is refused.
- ``positive_data_acceptance``: a request the schema calls valid is not refused, but for the rules
  no JSON Schema can state (``BEYOND_SCHEMA``: what bytes decode to, times counted from now...),
  whose 422 must name the rule. Everything else the validators check is published in the schema
  (``hpcwaas.text``, each rule tested against its validator in ``tests/hpcwaas/test_text_rules.py``).
- ``missing_required_header``, ``unsupported_method`` (405 for a method a path does not have),
  ``ignored_auth`` (an operation whose spec needs a token refuses a call without one; the
  catalogue's reads, open to anonymous visitors, say their token is optional).
- The stateful checks (``use_after_free``, ``ensure_resource_availability``,
  ``object_level_authorization``) have nothing to look at in single calls.

SQLite only, on a database of its own (generated requests create users, sites, keys, datasets...),
with the stack's real OpenBao. Dependencies that would do real work on generated input are
pointed at nothing on purpose, so that they answer quickly instead of acting:

- Airflow: ``airflow_url`` is a closed loopback port and retries are off, so pipeline calls answer
  503 at once instead of starting real DAG runs with generated configurations.
- Image builds: ``builder_dir`` does not exist, so the builder is unavailable and a build request
  is refused instead of running Apptainer on generated definitions.
- SSH: no site of the stack is registered; generated sites have generated hosts, reached with a
  2 s connect timeout (``POST /sites/host-keys``, ``/sites/{name}/info``, jobs and key checks
  answer 404, 422 or 503).
- The engine is off: deployments and executions stay as the API records them.

Excluded: nothing. Every operation of the spec is a test of its own here, and none is filtered.

Bounds: ``HPCWAAS_SCHEMATHESIS_EXAMPLES`` examples per operation (default 10: about 1500 requests,
under 2 minutes), a fixed seed (``HPCWAAS_SCHEMATHESIS_SEED``) so that CI runs are reproducible,
no shrinking (a failure is reported with its request as a curl line). The figures are printed at
the end of the module (``-s``).

Found and fixed with it: ``POST /ssh_keys`` took any RSA size from 3072 to 8192 bits, and an odd
size near 8192 kept a worker busy for more than 10 s per request; sizes are now 3072 or 4096.
With all checks: ``?since=`` took a number as seconds since 1970; an email at a centre's internal
domain (``.local``, ``.test``) was refused; a missing storage target was a 422, not a 404; and the
document did not say which text, paths, URLs, keys and field combinations are accepted.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.core.db import make_engine, make_session_factory, upgrade
from gateway.main import create_app
from gateway.persistence.models import Role
from gateway.schemas.users import TokenCreate, UserCreate
from gateway.services import users as user_service
from hpcwaas.settings import Settings
from hpcwaas.stack.info import VaultInfo

EXAMPLES = int(os.environ.get("HPCWAAS_SCHEMATHESIS_EXAMPLES", "10"))
SEED = int(os.environ.get("HPCWAAS_SCHEMATHESIS_SEED", "20240607"))
TOKENS: dict[str, str] = {}
COUNTS: dict[str, int] = {"cases": 0, "requests": 0}
STATUSES: Counter[str] = Counter()
# Rules that no JSON Schema can state: what uploaded bytes or a key decode to, a time relative to
# now, a cursor only the gateway hands out, a spec or import line checked by its own parser. A
# schema-valid request may break one; the 422 then names it (its error code, and the field or the
# message). Every other refusal of schema-valid data fails the test.
BEYOND_SCHEMA: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/workflows/upload"): ("invalid_package",),  # the file must be a CSAR (zip) archive
    ("POST", "/ssh_keys/import"): ("invalid_key",),  # the private key must decode
    ("POST", "/sites"): ("invalid_key",),  # the host key must decode
    ("POST", "/tokens"): ("a token lives from a minute to ten years",),  # counted from now
    ("POST", "/users/{user_id}/tokens"): ("a token lives from a minute to ten years",),
    ("POST", "/images/builds"): ("invalid_input",),  # the image spec's own rules (docs/containers.md)
    ("POST", "/catalogue/import"): ("import_rejected",),  # each line is a dataset record
    # A cursor is one the gateway gave; a search text has 1 to 12 different words (of letters and
    # digits as the search's tokenizer sees them, which no portable pattern can say).
    ("GET", "/catalogue/datasets"): ("cursor", "more than 12 words", "no letters or digits"),
    ("GET", "/catalogue/search"): ("cursor", "more than 12 words", "no letters or digits"),
    # The folder or repository must be under one of the operator's registry roots.
    ("POST", "/workflows"): ("is not inside a registry root",),
}


def _beyond_schema(response: Any, case: Any) -> bool:
    rules = BEYOND_SCHEMA.get((case.operation.method.upper(), case.operation.path), ())
    if response.status_code != 422 or not rules:
        return False
    error = response.json().get("error", {})
    said = f"{error.get('code')} {error.get('message')} {json.dumps(error.get('details'))}"
    return any(rule in said for rule in rules)


def positive_data_acceptance_beyond_schema(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, but for a 422 naming one of the rules in BEYOND_SCHEMA."""
    if _beyond_schema(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)


# Every check schemathesis has (the stateful ones find nothing to do on single calls).
CHECKS = [positive_data_acceptance_beyond_schema if check is positive_data_acceptance else check
          for check in schemathesis.checks.CHECKS.get_all()]


@pytest.fixture(scope="module")
def gateway_schema(vault_info: VaultInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{base / 'gateway.db'}"
    upgrade(url)
    settings = Settings(
        home=base / "home",
        registry_roots=[base / "registry"],
        database_url=url,
        vault_addr=vault_info.addr,
        vault_token_file=vault_info.gateway_token_file,
        vault_mount=vault_info.mount,
        ssh_connect_timeout=2,
        ssh_command_timeout=10,
        engine_in_gateway=False,
        airflow_url="http://127.0.0.1:9",
        airflow_retry_seconds=0,  # refused at once: the retries' backoff is tested on its own
        builder_dir=base / "no-builder",
        pipelines_storage_root=base / "storage",
        auth_failures_limit=1_000_000,  # the fuzzer's bad tokens are not an attack
    )
    (base / "registry").mkdir()
    engine = make_engine(url)
    with make_session_factory(engine)() as db:
        _, TOKENS["admin"], _ = user_service.bootstrap_admin(db, "admin", 1)
        scientist = user_service.create_user(db, UserCreate(username="sci", role=Role.SCIENTIST))
        _, TOKENS["scientist"] = user_service.issue_token(db, scientist, TokenCreate(name="fuzz"), 1)
    engine.dispose()
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        # 503 is the API's clear answer when a dependency is down; any other 5xx fails.
        "checks": {"not_a_server_error": {"expected-statuses": ["1xx", "2xx", "3xx", "4xx", 503]}},
    })
    app = create_app(settings)
    with TestClient(app):  # runs the lifespan: sessions, Vault, the (idle) build worker
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    print(f"\nschemathesis: {COUNTS['cases']} cases, {COUNTS['requests']} requests, "
          f"{EXAMPLES} examples per operation, seed {SEED}; statuses: {dict(sorted(STATUSES.items()))}")


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """The catalogue's import body (JSON lines): lines as given, or one JSON value per item."""
    if isinstance(value, str | bytes):
        return value.encode() if isinstance(value, str) else value
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation of the spec; building the app touches nothing."""
    spec = create_app(Settings(engine_in_gateway=False)).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


OPERATIONS = _operations()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_error(gateway_schema: Any, method: str, path: str) -> None:
    # schemathesis' own pytest integration (schema.parametrize, from_fixture) fails on pytest 9
    # (it reads Function._nodeid, gone there): the operation's strategy is driven directly.
    operation = gateway_schema[path][method]
    strategy = (operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE))

    # No shrinking: a failure is reported with its request (as curl), and the time stays bounded.
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(hypothesis.HealthCheck), print_blob=True,
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.seed(SEED)
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        COUNTS["cases"] += 1
        for role in ("admin", "scientist"):
            COUNTS["requests"] += 1
            response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKENS[role]}"},
                                              checks=CHECKS)
            STATUSES[f"{role} {response.status_code}"] += 1
            # The checks above already fail on a 5xx; said plainly, with the request to replay it.
            assert response.status_code < 500 or response.status_code == 503, case.as_curl_command()

    before = COUNTS["cases"]
    run()
    assert COUNTS["cases"] > before, f"no case was generated for {method} {path}"
