"""The Python SDK: a thin, typed client of the gateway's REST API (httpx).

    from hpcwaas.client import Client
    with Client("http://127.0.0.1:18000", token) as api:
        key = api.create_ssh_key(login="sciuser1")
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from hpcwaas.errors import HpcwaasError


class ApiError(HpcwaasError):
    """The gateway answered with an error (its message and hint are meant for people)."""

    code = "api_error"

    def __init__(self, status: int, code: str, message: str, hint: str | None = None,
                 details: Any = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.details = details

    def __str__(self) -> str:
        text = f"{self.message} [{self.status} {self.code}]"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class Client:
    """A gateway client. Every method returns the decoded JSON body or raises ApiError."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; decode JSON; turn error bodies into ApiError."""
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "gateway_unreachable", f"cannot reach the gateway at {self._http.base_url}: {exc}",
                           hint="is it running (waas admin serve, or make demo)? "
                                "Check the URL with 'waas config show'") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase) from None
            raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", ""), err.get("hint"),
                           err.get("details"))
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # users and tokens
    def me(self) -> dict[str, Any]:
        return dict(self.request("GET", "/users/me"))

    def create_user(self, username: str, role: str = "scientist", **extra: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/users", json={"username": username, "role": role, **extra}))

    def list_users(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/users"))

    def get_user(self, user: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/users/{user}"))

    def update_user(self, user: str, **changes: Any) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/users/{user}", json=changes))

    def create_token(self, name: str = "default", expires_in_days: int | None = None,
                     user: str | None = None, *, expires_in: str | None = None,
                     expires_at: str | None = None) -> dict[str, Any]:
        """A new token; its lifetime in days, as an ISO 8601 duration (``PT12H``) or an expiry time."""
        lifetime = {"expires_in_days": expires_in_days, "expires_in": expires_in, "expires_at": expires_at}
        body: dict[str, Any] = {"name": name, **{k: v for k, v in lifetime.items() if v is not None}}
        path = f"/users/{user}/tokens" if user else "/tokens"
        return dict(self.request("POST", path, json=body))

    def list_tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/users/{user}/tokens" if user else "/tokens"))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/tokens/{token_id}"))

    # sites
    def scan_host_keys(self, login_host: str, port: int = 22) -> list[dict[str, Any]]:
        return list(self.request("POST", "/sites/host-keys", json={"login_host": login_host, "port": port}))

    def register_site(self, **site: Any) -> dict[str, Any]:
        return dict(self.request("POST", "/sites", json=site))

    def list_sites(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/sites"))

    def get_site(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/sites/{name}"))

    def update_site(self, name: str, **changes: Any) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/sites/{name}", json=changes))

    def delete_site(self, name: str) -> None:
        self.request("DELETE", f"/sites/{name}")

    def site_info(self, name: str, ssh_key: str, login: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", f"/sites/{name}/info", json={"ssh_key": ssh_key, "login": login}))

    # ssh keys
    def create_ssh_key(self, name: str | None = None, type: str = "ed25519", login: str | None = None,
                       bits: int = 4096) -> dict[str, Any]:
        body = {"name": name, "type": type, "login": login, "bits": bits}
        return dict(self.request("POST", "/ssh_keys", json=body))

    def import_ssh_key(self, private_key: str, name: str | None = None, passphrase: str | None = None,
                       login: str | None = None) -> dict[str, Any]:
        body = {"private_key": private_key, "name": name, "passphrase": passphrase, "login": login}
        return dict(self.request("POST", "/ssh_keys/import", json=body))

    def list_ssh_keys(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/ssh_keys"))

    def get_ssh_key(self, key_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/ssh_keys/{key_id}"))

    def delete_ssh_key(self, key_id: str) -> None:
        self.request("DELETE", f"/ssh_keys/{key_id}")

    def check_ssh_key(self, key_id: str, site: str, login: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", f"/ssh_keys/{key_id}/check", json={"site": site, "login": login}))

    # ad-hoc jobs
    def submit_job(self, site: str, ssh_key: str, script: str, *, login: str | None = None, wait: bool = False,
                   **options: Any) -> dict[str, Any]:
        body = {"ssh_key": ssh_key, "login": login, "script": script, "wait": wait, **options}
        return dict(self.request("POST", f"/sites/{site}/jobs", json=body, timeout=None if wait else 120))

    def job_status(self, site: str, job_id: str, ssh_key: str, login: str | None = None) -> dict[str, Any]:
        params = {"ssh_key": ssh_key, **({"login": login} if login else {})}
        return dict(self.request("GET", f"/sites/{site}/jobs/{job_id}", params=params))

    def cancel_job(self, site: str, job_id: str, ssh_key: str, login: str | None = None) -> dict[str, Any]:
        params = {"ssh_key": ssh_key, **({"login": login} if login else {})}
        return dict(self.request("DELETE", f"/sites/{site}/jobs/{job_id}", params=params))

    def health(self) -> dict[str, Any]:
        return dict(self.request("GET", "/health"))

    # workflows, deployments, executions
    def register_workflow(self, name: str, source: dict[str, Any], description: str | None = None,
                          visibility: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"name": name, "source": source, "description": description, "visibility": visibility}
        return dict(self.request("POST", "/workflows", json=body))

    def upload_workflow(self, name: str, csar: bytes, filename: str = "workflow.csar",
                        description: str | None = None) -> dict[str, Any]:
        data = {"name": name, **({"description": description} if description else {})}
        files = {"file": (filename, csar, "application/zip")}
        return dict(self.request("POST", "/workflows/upload", data=data, files=files))

    def list_workflows(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/workflows"))

    def get_workflow(self, ref: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/workflows/{ref}"))

    def workflow_versions(self, ref: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/workflows/{ref}/versions"))

    def deploy(self, workflow: str, site: str, ssh_key: str, inputs: dict[str, Any] | None = None,
               version: int | None = None, login: str | None = None) -> dict[str, Any]:
        body = {"workflow": workflow, "site": site, "ssh_key": ssh_key, "inputs": inputs or {},
                "version": version, "login": login}
        return dict(self.request("POST", "/deployments", json=body))

    def list_deployments(self, workflow: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", "/deployments", params={"workflow": workflow} if workflow else None))

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{deployment_id}"))

    def undeploy(self, deployment_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/deployments/{deployment_id}"))

    def deployment_logs(self, deployment_id: str, after: int = 0, wait: float = 0) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{deployment_id}/logs", params={"after": after, "wait": wait}))

    def invoke(self, workflow: str, ssh_key: str, inputs: dict[str, Any] | None = None, *,
               deployment: str | None = None, site: str | None = None, login: str | None = None,
               tosca_workflow: str = "execute") -> dict[str, Any]:
        body = {"inputs": inputs or {}, "ssh_key": ssh_key, "deployment": deployment, "site": site,
                "login": login, "tosca_workflow": tosca_workflow}
        return dict(self.request("POST", f"/workflows/{workflow}/executions", json=body))

    def list_executions(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self.request("GET", "/executions", params=params))

    def get_execution(self, execution_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/executions/{execution_id}"))

    def resume_execution(self, execution_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/executions/{execution_id}/resume"))

    def cancel_execution(self, execution_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/executions/{execution_id}"))

    def execution_outputs(self, execution_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/executions/{execution_id}/outputs"))

    def execution_provenance(self, execution_id: str) -> dict[str, Any]:
        """The execution's W3C PROV document (PROV-JSON)."""
        return dict(self.request("GET", f"/executions/{execution_id}/provenance"))

    def execution_logs(self, execution_id: str, after: int = 0, wait: float = 0) -> dict[str, Any]:
        return dict(self.request("GET", f"/executions/{execution_id}/logs", params={"after": after, "wait": wait},
                                 timeout=wait + 30))

    def follow_execution(self, execution_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Yield log lines as they come (long-poll), until the execution ends."""
        while True:
            page = self.execution_logs(execution_id, after, wait=20)
            yield from page["lines"]
            after = page["next_seq"]
            if page["finished"]:
                return
