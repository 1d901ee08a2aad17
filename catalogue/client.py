"""SDK methods for the catalogue over the gateway client (``hpcwaas.client.Client``).

    from hpcwaas.client import Client
    from catalogue.client import CatalogueClient
    with Client(url, token) as api:
        cat = CatalogueClient(api)
        hits = cat.search("ocean temperature", format="netcdf")
        where = cat.resolve(hits["items"][0]["id"])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hpcwaas.client import ApiError, Client


class CatalogueClient:
    """The catalogue's REST API as methods returning decoded JSON (errors raise ApiError)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v not in (None, [], "")}
        return self._client.request("GET", path, params=clean)

    def search(self, q: str, **filters: Any) -> dict[str, Any]:
        return dict(self._get("/catalogue/search", q=q, **filters))

    def list_datasets(self, **filters: Any) -> dict[str, Any]:
        return dict(self._get("/catalogue/datasets", **filters))

    def iter_all(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every dataset matching the filters, following the cursors."""
        cursor = None
        while True:
            page = self.list_datasets(**filters, cursor=cursor)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._client.request("GET", f"/catalogue/datasets/{dataset_id}"))

    def create(self, **fields: Any) -> dict[str, Any]:
        return dict(self._client.request("POST", "/catalogue/datasets", json=fields))

    def update(self, dataset_id: str, **changes: Any) -> dict[str, Any]:
        return dict(self._client.request("PATCH", f"/catalogue/datasets/{dataset_id}", json=changes))

    def delete(self, dataset_id: str) -> None:
        self._client.request("DELETE", f"/catalogue/datasets/{dataset_id}")

    def history(self, dataset_id: str) -> list[dict[str, Any]]:
        return list(self._client.request("GET", f"/catalogue/datasets/{dataset_id}/history"))

    def resolve(self, dataset_id: str) -> dict[str, Any]:
        """Protocol, site, path, checksum and size of a dataset, for staging it."""
        return dict(self._client.request("GET", f"/catalogue/datasets/{dataset_id}/resolve"))

    def dcat(self, dataset_id: str | None = None) -> dict[str, Any]:
        path = f"/catalogue/datasets/{dataset_id}/dcat" if dataset_id else "/catalogue/dcat"
        return dict(self._client.request("GET", path))

    def import_lines(self, body: bytes) -> dict[str, Any]:
        """Import JSON lines (all or nothing); returns counts and ids."""
        return dict(self._client.request("POST", "/catalogue/import", content=body,
                                         headers={"Content-Type": "application/x-ndjson"}))

    def export_lines(self) -> Iterator[str]:
        """The JSON lines of every dataset you may read, streamed."""
        # Client.request decodes one JSON document; the export is many, so stream it here.
        http = self._client._http
        with http.stream("GET", "/catalogue/export.jsonl") as resp:
            if resp.status_code >= 400:
                resp.read()
                err = resp.json().get("error", {})
                raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", ""), err.get("hint"))
            yield from (line for line in resp.iter_lines() if line)

    def storage_targets(self) -> list[dict[str, Any]]:
        return list(self._client.request("GET", "/catalogue/storage-targets"))

    def create_storage_target(self, **fields: Any) -> dict[str, Any]:
        return dict(self._client.request("POST", "/catalogue/storage-targets", json=fields))

    def delete_storage_target(self, ref: str) -> None:
        self._client.request("DELETE", f"/catalogue/storage-targets/{ref}")
