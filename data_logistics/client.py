"""Trigger, follow and cancel pipeline runs over Airflow's REST API v2 (httpx, JWT auth).

Used by the gateway's ``/pipelines`` endpoints and by the deployer's data node types; it needs no
Airflow installation. Authentication: ``POST /auth/token`` with the Airflow user's password
gives a JWT, renewed on a 401/403.

Pitfalls (measured on Airflow 3.3.2): triggering needs ``"logical_date": null`` in the body, or
the API answers 422; run ids go in URL paths, so this client names runs itself
(``hpcwaas__<hex>``) instead of using Airflow's ``manual__<timestamp+00:00>``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from data_logistics.errors import AirflowError, AirflowUnavailable, PipelineNotFound
from hpcwaas.settings import Settings

TERMINAL = {"success", "failed"}
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)  # seconds between attempts at a repeatable call (the default 7.5 s)
UNAVAILABLE_HINT = "an operator should check that Airflow's API server runs and HPCWAAS_AIRFLOW_URL points at it"
TASK_ID = "transfer"


@dataclass
class RunStatus:
    """A run as a person (or the gateway) wants to see it."""

    pipeline: str
    run_id: str
    state: str  # queued | running | success | failed
    tasks: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    start_date: str | None = None
    end_date: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def retry_pauses(budget: float) -> tuple[float, ...]:
    """Pauses doubling from 0.5 s whose sum stays within ``budget`` seconds (none for 0)."""
    pauses: list[float] = []
    pause = 0.5
    while sum(pauses) + pause <= budget:
        pauses.append(pause)
        pause *= 2
    return tuple(pauses)


def new_run_id() -> str:
    return f"hpcwaas__{uuid.uuid4().hex}"


class AirflowClient:
    """A small typed client for the parts of REST API v2 the pipelines use."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0,
                 retry_pauses: tuple[float, ...] = RETRY_PAUSES) -> None:
        self.url = url.rstrip("/")
        self._pauses = retry_pauses
        self._username = username
        self._password = password
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._token: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AirflowClient:
        path = settings.airflow_password_file
        if path is None:
            path = settings.stack_dir / "airflow" / "admin.password"
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise AirflowUnavailable(
                f"cannot read the Airflow password file {path}",
                hint="an operator should set HPCWAAS_AIRFLOW_PASSWORD_FILE to a file the gateway can read",
            ) from exc
        return cls(settings.airflow_url, settings.airflow_username, password,
                   retry_pauses=retry_pauses(settings.airflow_retry_seconds))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _login(self) -> str:
        """A token for the API (transport errors are the caller's to retry)."""
        resp = self._http.post("/auth/token", json={"username": self._username, "password": self._password})
        if resp.status_code >= 400:
            raise AirflowUnavailable(f"Airflow refused our credentials (HTTP {resp.status_code})",
                                     hint="check HPCWAAS_AIRFLOW_USERNAME and HPCWAAS_AIRFLOW_PASSWORD_FILE")
        token: str = resp.json()["access_token"]
        return token

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One API call; a moment's fault (Airflow restarting, a database conflict answered 5xx)
        is retried with backoff when repeating the call is safe: always for reads, updates and
        deletes, and for a POST only when it never reached Airflow."""
        relogged = False
        for pause in (*self._pauses, None):
            try:
                if self._token is None:
                    self._token = self._login()
                headers = {"Authorization": f"Bearer {self._token}", **kw.get("headers", {})}
                resp = self._http.request(method, path, **{**kw, "headers": headers})
            except httpx.HTTPError as exc:
                repeatable = method != "POST" or isinstance(exc, httpx.ConnectError)
                if pause is not None and repeatable:
                    time.sleep(pause)
                    continue
                raise AirflowUnavailable(f"the Airflow API server at {self.url} does not answer: {exc}",
                                         hint=UNAVAILABLE_HINT) from exc
            if resp.status_code in (401, 403) and not relogged:
                self._token, relogged = None, True  # expired or rotated: log in again once
                continue
            if resp.status_code >= 500 and method != "POST" and pause is not None:
                time.sleep(pause)
                continue
            if resp.status_code == 404:
                raise PipelineNotFound(f"Airflow has no {path.removeprefix('/api/v2/')}", path=path)
            if resp.status_code >= 400:
                raise AirflowError(f"Airflow answered {resp.status_code} to {method} {path}: {resp.text[:500]}")
            return resp
        raise AirflowUnavailable("Airflow keeps refusing our token or failing", hint=UNAVAILABLE_HINT)

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"

    # ------------------------------------------------------------------ API

    def health(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self._http.get("/api/v2/monitor/health").json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AirflowUnavailable(f"Airflow does not answer at {self.url}: {exc}") from exc
        return body

    def list_dags(self, tag: str | None = "hpcwaas") -> list[dict[str, Any]]:
        params = {"tags": tag, "limit": 100} if tag else {"limit": 100}
        dags: list[dict[str, Any]] = self._request("GET", "/api/v2/dags", params=params).json()["dags"]
        return dags

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        dag: dict[str, Any] = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}").json()
        return dag

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None,
                note: str | None = None) -> dict[str, Any]:
        """Start a run now; the run as Airflow describes it (``dag_run_id``, ``state``...)."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf, "dag_run_id": run_id or new_run_id()}
        if note:
            body["note"] = note
        run: dict[str, Any] = self._request(
            "POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", json=body
        ).json()
        return run

    def list_runs(self, dag_id: str = "~", limit: int = 100) -> list[dict[str, Any]]:
        """Recent runs, newest first (``~``: of every DAG); ``conf`` included."""
        body = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='~')}/dagRuns",
                             params={"limit": limit, "order_by": "-run_after"}).json()
        runs: list[dict[str, Any]] = body["dag_runs"]
        return runs

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run, ``conf`` included (callers must not show it to users)."""
        run: dict[str, Any] = self._request("GET", self._run_path(dag_id, run_id)).json()
        return run

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self._request("GET", f"{self._run_path(dag_id, run_id)}/taskInstances").json()
        tasks: list[dict[str, Any]] = body["task_instances"]
        return tasks

    def xcom(self, dag_id: str, run_id: str, key: str, task_id: str = TASK_ID) -> Any:
        """An XCom value, or None when the task has not pushed it (yet)."""
        try:
            resp = self._request(
                "GET", f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/xcomEntries/{quote(key, safe='')}",
                params={"deserialize": "true"},
            )
        except PipelineNotFound:
            return None
        return resp.json().get("value")

    def logs(self, dag_id: str, run_id: str, task_id: str = TASK_ID, try_number: int = 1) -> list[str]:
        """The task's log as lines (structured entries flattened to ``time level event``)."""
        try:
            resp = self._request(
                "GET", f"{self._run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{try_number}",
                headers={"Accept": "application/json"}, params={"full_content": "true"},
            )
        except PipelineNotFound:
            return []
        content = resp.json().get("content", [])
        lines: list[str] = []
        for entry in content if isinstance(content, list) else [content]:
            if isinstance(entry, dict):
                event = entry.get("event", "")
                if not event:
                    continue
                details = entry.get("error_detail")
                if isinstance(details, list):  # a failure: the exception's type and message, no frames
                    event += "".join(f" {d.get('exc_type')}: {d.get('exc_value')}" for d in details
                                     if isinstance(d, dict))
                lines.append(" ".join(str(x) for x in (entry.get("timestamp", ""), entry.get("level", ""), event)
                                      if x).strip())
            else:
                lines.extend(str(entry).splitlines())
        return lines

    def cancel(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """Mark the run failed; Airflow stops its running task."""
        run: dict[str, Any] = self._request("PATCH", self._run_path(dag_id, run_id), json={"state": "failed"}).json()
        return run

    def status(self, dag_id: str, run_id: str) -> RunStatus:
        """State, task states, progress (XCom ``progress``) and result (XCom ``return_value``)."""
        run = self.get_run(dag_id, run_id)
        tasks = [
            {k: t.get(k) for k in ("task_id", "state", "try_number", "start_date", "end_date", "duration")}
            for t in self.task_instances(dag_id, run_id)
        ]
        status = RunStatus(pipeline=dag_id, run_id=run_id, state=str(run.get("state")), tasks=tasks,
                           start_date=run.get("start_date"), end_date=run.get("end_date"))
        status.progress = self.xcom(dag_id, run_id, "progress")
        if status.state == "success":
            status.result = self.xcom(dag_id, run_id, "return_value")
        elif status.state == "failed":
            status.error = self.failure_reason(dag_id, run_id)
        return status

    def failure_reason(self, dag_id: str, run_id: str) -> str | None:
        """The last error line of the task log (the message our errors are written to be read by)."""
        lines = self.logs(dag_id, run_id)
        for line in reversed(lines):
            if "Task failed with exception" in line:
                return line.split("Task failed with exception", 1)[1].strip()[-1000:]
        for line in reversed(lines):
            if " error " in line:
                return line[-1000:]
        return lines[-1][-1000:] if lines else None

    def wait(self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 1.0,
             on_update: Callable[[RunStatus], None] | None = None) -> RunStatus:
        """Poll until the run ends (or ``timeout``); calls ``on_update`` with each status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(dag_id, run_id)
            if on_update is not None:
                on_update(status)
            if status.finished:
                return status
            if time.monotonic() > deadline:
                raise AirflowError(f"run {run_id} of {dag_id} still {status.state} after {timeout:.0f} s")
            time.sleep(poll)
