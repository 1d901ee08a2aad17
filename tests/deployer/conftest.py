"""Helpers for deployer tests: write templates and playbooks into tmp_path."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcwaas.stack.info import SiteInfo, VaultInfo

HEADER = "tosca_definitions_version: tosca_simple_yaml_1_3\n"
USER = "sciuser1"

MARKER_PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: Wait a little
      ansible.builtin.command: sleep {{ delay | default(0) }}
      changed_when: false
    - name: Append to the marker file
      ansible.builtin.shell: echo {{ line | quote }} >> {{ marker | quote }}
      changed_when: true
    - name: Report
      ansible.builtin.set_stats:
        data: {made: "{{ line }}"}
"""


def write(base: Path, files: dict[str, str]) -> Path:
    """Write files (dedented) under ``base``; return the first one's path."""
    first = None
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        first = first or path
    assert first is not None
    return first


def marker_template(n_chain: int, n_free: int, delay: float = 0.0, marker: str = "marker.txt") -> str:
    """A topology of nodes on localhost whose create playbook appends '<node>' to a marker file."""
    lines = [
        HEADER,
        "node_types:",
        "  test.Node:",
        "    derived_from: tosca.nodes.Root",
        "    attributes: {made: {type: string}}",
        "    requirements:",
        "      - host: {capability: tosca.capabilities.Container, relationship: tosca.relationships.HostedOn}",
        "    interfaces:",
        "      Standard:",
        "        create:",
        "          implementation: playbooks/mark.yml",
        "          inputs:",
        "            line: {get_attribute: [SELF, tosca_name]}",
        "            marker: {get_input: marker}",
        "            delay: {get_input: delay}",
        "topology_template:",
        "  inputs:",
        f"    marker: {{type: string, default: {marker}}}",
        f"    delay: {{type: float, default: {delay}}}",
        "  node_templates:",
        "    here: {type: hpcwaas.nodes.Localhost}",
    ]
    for i in range(n_chain):
        reqs = "[{host: here}" + (f", {{dependency: c{i - 1}}}" if i else "") + "]"
        lines.append(f"    c{i}: {{type: test.Node, requirements: {reqs}}}")
    for i in range(n_free):
        lines.append(f"    f{i}: {{type: test.Node, requirements: [{{host: here}}]}}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def unsandboxed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The standalone deployer without its sandbox, in this process and the CLIs it starts: for
    tests that check what local operations did to this machine's files, as an operator's own
    templates may (the sandbox, on by default and always in the gateway, keeps them from it)."""
    from hpcwaas.settings import get_settings

    monkeypatch.setenv("HPCWAAS_DEPLOYER_SANDBOX", "false")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def marker_project(tmp_path: Path, unsandboxed: None):
    """Factory: a project folder with a marker topology; returns (template, marker file)."""

    def make(n_chain: int = 3, n_free: int = 0, delay: float = 0.0) -> tuple[Path, Path]:
        marker = tmp_path / "marker.txt"
        tpl = write(tmp_path / "proj", {"service.yaml": marker_template(n_chain, n_free, delay, str(marker)),
                                        "playbooks/mark.yml": MARKER_PLAYBOOK})
        return tpl, marker

    return make


@pytest.fixture(scope="module")
def credential(site: SiteInfo, vault_info: VaultInfo) -> Iterator[dict[str, Any]]:
    """A fresh key pair: private half in Vault, public half authorised for the site user."""
    from deployer.credentials import VaultCredentialProvider
    from hpcwaas.ssh import generate_keypair
    from hpcwaas.stack.site_users import authorize_key
    from hpcwaas.vault import Vault

    vault = Vault(vault_info.addr, vault_info.gateway_token(), mount=vault_info.mount)
    key_id = f"k{uuid.uuid4().hex[:8]}"
    pair = generate_keypair()
    vault.put_ssh_key("deployer-tests", key_id, pair.private_key)
    authorize_key(USER, pair.public.line)
    yield {
        "ref": f"deployer-tests/{key_id}",
        "provider": VaultCredentialProvider(vault),
        "private_key": pair.private_key,
        "env": {"HPCWAAS_VAULT_ADDR": vault_info.addr, "HPCWAAS_VAULT_TOKEN_FILE": str(vault_info.gateway_token_file),
                "HPCWAAS_VAULT_MOUNT": vault_info.mount},
    }
    vault.delete_ssh_key("deployer-tests", key_id)
