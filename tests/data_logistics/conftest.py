"""Fixtures for the data-logistics tests: a key for the site users (kept in the real OpenBao),
sessions on the real sshd, throwaway work directories, and a small HTTP server with Range."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from data_logistics.credentials import SiteRef
from hpcwaas.ssh import KeyPair, SiteEndpoint, SSHSession, connect, generate_keypair
from hpcwaas.stack.info import SiteInfo, VaultInfo
from hpcwaas.stack.site_users import authorize_key
from hpcwaas.vault import Vault

TEST_USER = "dltests"  # the Vault "user" that owns the test key (so the leak test searches it too)


@dataclass(frozen=True)
class SiteKey:
    pair: KeyPair
    key_id: str


@pytest.fixture(scope="session")
def site_key(site: SiteInfo, vault_info: VaultInfo) -> SiteKey:
    """One key authorised for both site users, stored in the dev OpenBao like a gateway key."""
    pair = generate_keypair()
    for user in ("sciuser1", "sciuser2"):
        authorize_key(user, pair.public.line)
    key_id = uuid.uuid4().hex
    Vault(vault_info.addr, vault_info.gateway_token(), mount=vault_info.mount).put_ssh_key(
        TEST_USER, key_id, pair.private_key
    )
    return SiteKey(pair, key_id)


@pytest.fixture
def vault(vault_info: VaultInfo) -> Vault:
    return Vault(vault_info.addr, vault_info.gateway_token(), mount=vault_info.mount)


def site_ref(site: SiteInfo, vault: Vault, key: SiteKey, login: str, work_dir: str, name: str = "local") -> SiteRef:
    """What the gateway would put in a DAG run's conf for this site user."""
    return SiteRef(
        site=name,
        host=site.host,
        port=site.port,
        host_key=site.host_key,
        login=login,
        work_dir=work_dir,
        key_id=key.key_id,
        vault_addr=vault.addr,
        wrap_token=vault.wrap(Vault.ssh_key_path(TEST_USER, key.key_id), "120s"),
    )


@pytest.fixture
def session(site: SiteInfo, site_key: SiteKey) -> Iterator[SSHSession]:
    with connect(_endpoint(site), "sciuser1", site_key.pair.private_key) as s:
        yield s


@pytest.fixture
def session2(site: SiteInfo, site_key: SiteKey) -> Iterator[SSHSession]:
    with connect(_endpoint(site), "sciuser2", site_key.pair.private_key) as s:
        yield s


def _endpoint(site: SiteInfo) -> SiteEndpoint:
    return SiteEndpoint(site.host, site.port, site.host_key)


def _work_dir(session: SSHSession, login: str) -> Iterator[str]:
    path = f"/home/{login}/dl-tests/{uuid.uuid4().hex[:10]}"
    yield path
    session.run(["rm", "-rf", "--", path], timeout=120)


@pytest.fixture
def work_dir(session: SSHSession) -> Iterator[str]:
    """A fresh work directory of sciuser1, removed afterwards."""
    yield from _work_dir(session, "sciuser1")


@pytest.fixture
def work_dir2(session2: SSHSession) -> Iterator[str]:
    yield from _work_dir(session2, "sciuser2")


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """A file of pseudo-random bytes (fast to make), returning its sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        left, i = size, 0
        while left > 0:
            chunk = (block[i % 97:] + block[: i % 97])[: min(left, len(block))]
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            i += 1
    return digest.hexdigest()


def make_tree(root: Path, count: int, size: int = 4096) -> dict[str, str]:
    """``count`` small files in a few subfolders; rel -> sha256."""
    out = {}
    for i in range(count):
        rel = f"d{i % 7}/f{i:05d}.dat"
        data = os.urandom(size)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with single-range ``Range: bytes=N-`` support (like an image store)."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def send_head(self):  # type: ignore[no-untyped-def]
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        start = 0
        header = self.headers.get("Range")
        fh = path.open("rb")
        if header and header.startswith("bytes=") and header.endswith("-"):
            start = int(header[6:-1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        fh.seek(start)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return fh


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(directory served, base URL) of a loopback HTTP server with Range support."""
    root = tmp_path_factory.mktemp("http")
    handler = lambda *a, **kw: _RangeHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
