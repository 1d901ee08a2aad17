"""SDK methods for the gateway's ``/images`` endpoints, over :class:`hpcwaas.client.Client`.

    from hpcwaas.client import Client
    from containers.client import ImagesClient
    with Client(url, token) as api:
        images = ImagesClient(api)
        build = images.build_step(Path("step/image.yaml"))
        build = images.wait(build["id"], on_log=print)
        images.download(build["image_id"], Path("step.sif"))   # resumes a partial file
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from containers.store import inputs_from_step
from hpcwaas.client import ApiError, Client

TERMINAL = ("succeeded", "failed")


class ImagesClient:
    """Image builds and the image store through the gateway."""

    def __init__(self, api: Client) -> None:
        self.api = api

    def builder(self) -> dict[str, Any]:
        return dict(self.api.request("GET", "/images/builder"))

    def build(self, *, spec: dict[str, Any] | None = None, dockerfile: str | None = None,
              files: dict[str, bytes] | None = None, executable: list[str] | None = None,
              force: bool = False) -> dict[str, Any]:
        """Request a build from a spec (mapping) or a Dockerfile and the step files it copies."""
        body = {
            **({"spec": spec} if spec is not None else {}),
            **({"dockerfile": dockerfile} if dockerfile is not None else {}),
            "files": {path: base64.b64encode(data).decode() for path, data in (files or {}).items()},
            "executable": sorted(executable or []),
            "force": force,
        }
        return dict(self.api.request("POST", "/images/builds", json=body))

    def build_step(self, spec_path: Path, step_dir: Path | None = None, force: bool = False) -> dict[str, Any]:
        """Request a build of a step's ``image.yaml`` or ``Dockerfile`` (validated locally first)."""
        inputs = inputs_from_step(spec_path, step_dir)
        files = {path: f.data for path, f in inputs.files.items()}
        executable = [path for path, f in inputs.files.items() if f.executable]
        if inputs.kind == "dockerfile":
            return self.build(dockerfile=inputs.dockerfile, files=files, executable=executable, force=force)
        spec = yaml.safe_load(spec_path.read_text()) or {}
        return self.build(spec=spec, files=files, executable=executable, force=force)

    def status(self, build_id: str) -> dict[str, Any]:
        return dict(self.api.request("GET", f"/images/builds/{build_id}"))

    def builds(self, everyone: bool = False) -> list[dict[str, Any]]:
        return list(self.api.request("GET", "/images/builds", params={"all": "true"} if everyone else None))

    def logs(self, build_id: str, offset: int = 0) -> tuple[str, int, str]:
        """Log text from ``offset``, the next offset, and the build's state."""
        resp = self._http().get(f"/images/builds/{build_id}/logs", params={"offset": offset})
        _raise_for(resp)
        return resp.text, int(resp.headers.get("x-next-offset", offset)), resp.headers.get("x-build-state", "")

    def wait(self, build_id: str, *, on_log: Callable[[str], None] | None = None, poll: float = 1.0,
             timeout: float | None = None) -> dict[str, Any]:
        """Follow a build until it ends, passing new log text to ``on_log``; the final record."""
        offset = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_log is not None:
                text, offset, _ = self.logs(build_id, offset)
                if text:
                    on_log(text)
            build = self.status(build_id)
            if build["state"] in TERMINAL:
                if on_log is not None:
                    text, offset, _ = self.logs(build_id, offset)
                    if text:
                        on_log(text)
                return build
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"build {build_id} still {build['state']} after {timeout}s")
            time.sleep(poll)

    def list(self) -> list[dict[str, Any]]:
        return list(self.api.request("GET", "/images"))

    def show(self, image_id: str) -> dict[str, Any]:
        return dict(self.api.request("GET", f"/images/{image_id}"))

    def delete(self, image_id: str) -> None:
        self.api.request("DELETE", f"/images/{image_id}")

    def download(self, image_id: str, dest: Path, *, on_progress: Callable[[int, int], None] | None = None) -> Path:
        """Download the SIF to ``dest``, resuming ``dest.part`` with an HTTP Range request."""
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._http().stream("GET", f"/images/{image_id}/download", headers=headers, timeout=None) as resp:
            if resp.status_code == 416:  # the partial file is already complete
                resp.close()
            else:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                if resp.status_code == 200:
                    have = 0  # the server sent everything: start over
                total = have + int(resp.headers.get("content-length", 0))
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if have else os.O_TRUNC), 0o644)
                with os.fdopen(fd, "ab" if have else "wb") as fh:
                    for chunk in resp.iter_bytes(1 << 20):
                        fh.write(chunk)
                        have += len(chunk)
                        if on_progress is not None:
                            on_progress(have, total)
        part.replace(dest)
        return dest

    def _http(self) -> httpx.Client:
        # Logs and downloads are not JSON: use the SDK's configured httpx client directly.
        http: httpx.Client = self.api._http
        return http


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase) from None
    raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", ""), err.get("hint"),
                   err.get("details"))
