"""Integer parameters carry the databases' bounds: a number past 64 bits is a 422, not a 500."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import Person, error_of

HUGE = str(2**63)


@pytest.mark.parametrize("url", [
    f"/executions/0123456789abcdef0123456789abcdef/logs?after={HUGE}",
    f"/executions/0123456789abcdef0123456789abcdef/logs/stream?after={HUGE}",
    f"/deployments/0123456789abcdef0123456789abcdef/logs?after={HUGE}",
    f"/workflows/any/versions/{HUGE}",
    f"/images/builds/0123456789abcdef0123456789abcdef/logs?offset={HUGE}",
])
def test_numbers_past_64_bits_are_refused(people: dict[str, Person], url: str) -> None:
    resp = people["admin"].get(url)
    assert resp.status_code == 422, (url, resp.status_code, resp.text[:300])
    assert error_of(resp)["code"]
