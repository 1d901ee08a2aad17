"""Helpers for deployer tests: write templates and playbooks into tmp_path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

HEADER = "tosca_definitions_version: tosca_simple_yaml_1_3\n"

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
def marker_project(tmp_path: Path):
    """Factory: a project folder with a marker topology; returns (template, marker file)."""

    def make(n_chain: int = 3, n_free: int = 0, delay: float = 0.0) -> tuple[Path, Path]:
        marker = tmp_path / "marker.txt"
        tpl = write(tmp_path / "proj", {"service.yaml": marker_template(n_chain, n_free, delay, str(marker)),
                                        "playbooks/mark.yml": MARKER_PLAYBOOK})
        return tpl, marker

    return make
