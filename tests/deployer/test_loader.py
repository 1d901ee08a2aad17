"""Opening packages: file, folder, CSAR in both forms, and cleanup."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deployer.errors import PackageError
from deployer.loader import open_package, parse_yaml
from deployer.validate import load_topology
from tests.deployer.conftest import HEADER

TPL = (
    HEADER + "topology_template:\n  node_templates:\n    n:\n      type: tosca.nodes.Root\n"
    "      interfaces: {Standard: {create: playbooks/p.yml}}\n"
)
PLAY = b"- hosts: all\n  gather_facts: false\n  tasks: []\n"


@pytest.mark.parametrize("meta", [True, False], ids=["tosca-meta", "single-root-yaml"])
def test_csar_forms_and_cleanup(tmp_path: Path, meta: bool) -> None:
    csar = tmp_path / "x.csar"
    with zipfile.ZipFile(csar, "w") as zf:
        if meta:
            zf.writestr(
                "TOSCA-Metadata/TOSCA.meta", "TOSCA-Meta-File-Version: 1.1\nEntry-Definitions: defs/main.yaml\n"
            )
            zf.writestr("defs/main.yaml", TPL)
            zf.writestr("defs/playbooks/p.yml", PLAY)
        else:
            zf.writestr("main.yaml", TPL)
            zf.writestr("playbooks/p.yml", PLAY)
    with open_package(csar) as package:
        extracted = package.extracted
        assert extracted is not None and extracted.is_dir()
        topology, _ = load_topology(package)
        impl = topology.nodes["n"].operations["Standard.create"].implementation
        assert impl is not None and impl.path is not None and impl.path.is_file()
    assert not extracted.exists()


def test_folder_with_two_roots_is_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TPL)
    (tmp_path / "b.yaml").write_text(TPL)
    with pytest.raises(PackageError, match="several root-level TOSCA files"):
        open_package(tmp_path)


def test_meta_entry_must_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "TOSCA-Metadata").mkdir()
    (tmp_path / "TOSCA-Metadata" / "TOSCA.meta").write_text("Entry-Definitions: ../../etc/passwd\n")
    with pytest.raises(Exception, match="outside"):
        open_package(tmp_path)


def test_yaml_lines_are_recorded() -> None:
    doc = parse_yaml("a:\n  b:\n    - c: 1\n", "x.yaml")
    assert doc.line("a", "b", 0, "c") == 3
    assert doc.line("a", "missing") == 1
