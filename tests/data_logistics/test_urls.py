"""The public-address rule for the URLs pipelines fetch, and its check on every redirect."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

import pytest

from data_logistics.errors import InvalidTransfer
from data_logistics.transfer import HttpFile
from data_logistics.urls import UrlPolicy


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18200/v1/sys/health", "http://localhost/", "http://10.1.2.3/x", "http://192.168.0.1/",
    "http://172.16.5.5/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://100.64.0.1/", "http://0.0.0.0/", "https://[fe80::1]/", "http://224.0.0.1/",
])
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(InvalidTransfer, match="internal address"):
        UrlPolicy().check(url)


def test_public_addresses_pass_and_the_operator_may_allow_hosts() -> None:
    UrlPolicy().check("https://8.8.8.8/data.csv")
    UrlPolicy(["10.0.0.0/8"]).check("http://10.1.2.3/x")
    UrlPolicy(["localhost"]).check("http://localhost:8080/x")
    with pytest.raises(InvalidTransfer, match="internal address"):
        UrlPolicy(["10.0.0.0/8"]).check("http://192.168.1.1/x")


def test_the_stacks_own_services_stay_refused_even_when_allowed() -> None:
    policy = UrlPolicy(["127.0.0.0/8", "localhost"], ["http://127.0.0.1:18200"])
    with pytest.raises(InvalidTransfer, match="gateway's own services"):
        policy.check("http://localhost:18200/v1/sys/health")
    policy.check("http://127.0.0.1:18201/other")  # another port of an allowed range


def test_bad_urls_are_refused() -> None:
    for url in ("ftp://example.org/x", "http:///nohost", "http://no-such-host.invalid/x"):
        with pytest.raises(InvalidTransfer):
            UrlPolicy().check(url)


@pytest.fixture
def redirector() -> Iterator[int]:
    """A server on loopback answering every request with a redirect to OpenBao's usual port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:18200/v1/sys/health")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_a_redirect_to_an_internal_address_is_refused(redirector: int) -> None:
    """The first host is allowed by name; where it redirects is checked again, and refused."""
    source = HttpFile(f"http://localhost:{redirector}/data", guard=UrlPolicy(["localhost"]).guard())
    try:
        with pytest.raises(InvalidTransfer, match=re.escape("127.0.0.1 resolves to 127.0.0.1, an internal address")):
            source.size()
        with pytest.raises(InvalidTransfer, match="internal address"), source.open(0):
            pass
    finally:
        source.close()
