"""Fixtures shared by the whole suite: the real local stack, found or failed fast with a hint."""

from __future__ import annotations

import pytest

from hpcwaas.settings import get_settings
from hpcwaas.stack.info import SiteInfo, StackInfo, VaultInfo, load_stack_info

pytest_plugins = ["tests.fixtures.gateway"]

HINT = "start the local stack first: `make stack-up` (or `make test`, which does it)"


@pytest.fixture(scope="session")
def stack() -> StackInfo:
    """The running local stack, as described by its stack.json."""
    try:
        return load_stack_info(get_settings().stack_dir)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}\n{HINT}", pytrace=False)


@pytest.fixture(scope="session")
def vault_info(stack: StackInfo) -> VaultInfo:
    """The dev OpenBao of the stack, checked to answer."""
    import hvac
    import requests

    info = stack.vault("dev")
    try:
        hvac.Client(url=info.addr, timeout=3).sys.read_health_status(method="GET")
    except requests.ConnectionError:
        pytest.fail(f"OpenBao does not answer at {info.addr}; {HINT}", pytrace=False)
    return info


@pytest.fixture(scope="session")
def site(stack: StackInfo) -> SiteInfo:
    """The loopback HPC site (sshd + Slurm), checked to answer."""
    import socket

    if stack.site is None:
        pytest.fail(f"the stack has no site; {HINT}", pytrace=False)
    try:
        socket.create_connection((stack.site.host, stack.site.port), timeout=3).close()
    except OSError:
        pytest.fail(f"the site's sshd does not answer on {stack.site.host}:{stack.site.port}; {HINT}", pytrace=False)
    return stack.site


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the secret-leak search after everything else, so it sees what the suite left."""
    items.sort(key=lambda item: item.module is not None and item.module.__name__.endswith("test_secret_leak"))
