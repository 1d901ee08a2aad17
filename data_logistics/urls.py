"""Which http(s) URLs a pipeline may fetch: public addresses, unless the operator allows a host.

A stage-in source is a user's URL fetched from inside the centre: left unchecked it reads
OpenBao, Airflow, the gateway or any internal service and copies the answer to the user's site
folder. So a URL is refused when its host resolves to a loopback, private, link-local, shared,
reserved or multicast address, or to one of the stack's own services (``blocked``), checked after
DNS resolution by the gateway when the run is requested and by the pipeline on every request it
makes (redirects included). The operator may allow named hosts or address ranges
(``HPCWAAS_PIPELINES_ALLOWED_HOSTS``); the stack's own services stay refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from data_logistics.errors import InvalidTransfer
from hpcwaas.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_HINT = "use a public URL, or ask the operator to allow this host (HPCWAAS_PIPELINES_ALLOWED_HOSTS)"


def _addresses(host: str, port: int) -> set[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidTransfer(f"cannot resolve the host {host!r}: {exc}", hint="check the URL", field="source") from exc
    out: set[Address] = set()
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        out.add(mapped or ip)
    return out


def _split(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidTransfer(f"{url!r} is not an http(s) URL with a host", field="source")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidTransfer(f"{url!r} has an invalid port", field="source") from exc
    return parts.hostname.lower().rstrip("."), port


class UrlPolicy:
    """The check every fetched URL goes through (``check`` raises InvalidTransfer naming why)."""

    def __init__(self, allowed: Sequence[str] = (), blocked_urls: Sequence[str] = ()) -> None:
        self.allowed_names = {a.lower().rstrip(".") for a in allowed if not _is_network(a)}
        self.allowed_nets = [ipaddress.ip_network(a, strict=False) for a in allowed if _is_network(a)]
        self.blocked: set[tuple[Address, int]] = set()
        for url in blocked_urls:
            try:
                host, port = _split(url)
                self.blocked.update((ip, port) for ip in _addresses(host, port))
            except InvalidTransfer:
                continue  # a service that does not resolve cannot be reached either

    def check(self, url: str) -> None:
        """Refuse ``url`` unless every address its host resolves to may be fetched."""
        host, port = _split(url)
        ips = _addresses(host, port)
        for ip in ips:
            if (ip, port) in self.blocked:
                raise InvalidTransfer(f"{url} is one of the gateway's own services ({host} -> {ip}:{port})",
                                      hint="pipelines do not fetch from the gateway, Vault or Airflow",
                                      field="source")
        if host in self.allowed_names:
            return
        for ip in ips:
            if any(ip in net for net in self.allowed_nets):
                continue
            if not ip.is_global or ip.is_multicast:
                raise InvalidTransfer(f"{url}: {host} resolves to {ip}, an internal address; the pipelines "
                                      "fetch only public addresses", hint=_HINT, field="source")

    def guard(self) -> Callable[[str], None]:
        """``check`` as a callback (for each request of an HTTP client, redirects included)."""
        return self.check


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def policy_for(settings: Settings) -> UrlPolicy:
    """The operator's policy: their allowed hosts; the gateway, Vault and Airflow always refused."""
    return UrlPolicy(settings.pipelines_allowed_hosts, [settings.public_url, settings.vault_addr, settings.airflow_url])
