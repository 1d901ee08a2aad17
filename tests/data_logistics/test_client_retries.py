"""The Airflow client waits out a moment's fault when repeating the call is safe (its policy, on a
scripted transport: the stack's own Airflow cannot be made to answer 503 on demand)."""

from __future__ import annotations

import httpx
import pytest

from data_logistics import client as client_module
from data_logistics.client import AirflowClient
from data_logistics.errors import AirflowError, AirflowUnavailable


def test_the_retry_budget_gives_doubling_pauses_within_it() -> None:
    assert client_module.retry_pauses(7.5) == client_module.RETRY_PAUSES
    assert client_module.retry_pauses(0) == ()
    assert client_module.retry_pauses(2) == (0.5, 1.0)


def _client(answers: list[int | type[Exception]]) -> tuple[AirflowClient, list[str]]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(200, json={"access_token": "t"})
        seen.append(request.method)
        answer = answers.pop(0)
        if isinstance(answer, int):
            return httpx.Response(answer, json={"state": "failed"} if answer == 200 else {"detail": "Database error"})
        raise answer("refused", request=request)

    airflow = AirflowClient("http://airflow.invalid", "admin", "pw", retry_pauses=(0.0, 0.0, 0.0))
    airflow._http = httpx.Client(base_url="http://airflow.invalid", transport=httpx.MockTransport(handle))
    return airflow, seen


def test_a_cancel_answered_500_once_is_repeated_and_succeeds() -> None:
    airflow, seen = _client([500, 200])  # seen on the stack: a database conflict in Airflow's API
    assert airflow.cancel("stage_in", "run-1")["state"] == "failed"
    assert seen == ["PATCH", "PATCH"]


def test_reads_outlast_a_restart_and_then_name_the_service() -> None:
    airflow, seen = _client([httpx.ConnectError, httpx.ReadError, 200])
    airflow.get_run("stage_in", "run-1")
    airflow, seen = _client([httpx.ConnectError] * 4)
    with pytest.raises(AirflowUnavailable, match="Airflow API server") as caught:
        airflow.get_run("stage_in", "run-1")
    assert "hpcwaas.stack" not in (caught.value.hint or "") and "operator" in (caught.value.hint or "")
    assert len(seen) == 4


def test_a_start_is_not_repeated_once_it_reached_airflow() -> None:
    airflow, seen = _client([503])
    with pytest.raises(AirflowError, match="503"):
        airflow.trigger("stage_in", {}, run_id="run-1")
    assert seen == ["POST"]
    airflow, seen = _client([httpx.ReadError])
    with pytest.raises(AirflowUnavailable):
        airflow.trigger("stage_in", {}, run_id="run-1")
    assert seen == ["POST"]
    airflow, seen = _client([httpx.ConnectError, 200])  # never reached it: safe to send again
    airflow.trigger("stage_in", {}, run_id="run-1")
    assert seen == ["POST", "POST"]
