"""The catalogue of bad templates: each gives one clear error (file, node, field, line), no crash."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from deployer.api import validate_template
from deployer.errors import InputError, PackageError, TemplateError
from tests.deployer.conftest import HEADER, write

PLAY = "- hosts: all\n  gather_facts: false\n  tasks: []\n"

GOOD_NODES = """
topology_template:
  node_templates:
    here: {type: hpcwaas.nodes.Localhost}
    app:
      type: hpcwaas.nodes.SoftwareInstall
      properties: {install_dir: /tmp/x}
      requirements: [{host: here}]
"""

# name -> (files, expected substring, expected line or None, expected node or None)
CASES: dict[str, tuple[dict[str, str], str, int | None, str | None]] = {
    "yaml_syntax": ({"s.yaml": HEADER + "topology_template:\n  node_templates: [a, b\n"}, "YAML syntax error", 4, None),
    "bad_version": ({"s.yaml": "tosca_definitions_version: tosca_2_0\n" + GOOD_NODES},
                    "tosca_definitions_version must be one of", 1, None),
    "unknown_type": ({"s.yaml": HEADER + GOOD_NODES.replace("hpcwaas.nodes.SoftwareInstall",
                                                            "hpcwaas.nodes.SoftwareInstal")},
                     'Type "hpcwaas.nodes.SoftwareInstal" is not a valid type', 7, "app"),
    "missing_property": ({"s.yaml": HEADER + GOOD_NODES.replace("properties: {install_dir: /tmp/x}", "")},
                         "missing required field", 6, "app"),
    "unknown_field": ({"s.yaml": HEADER + GOOD_NODES.replace("properties:", "propertys:")},
                      'unknown field "propertys"', 8, "app"),
    "missing_input": ({"s.yaml": HEADER + """
topology_template:
  inputs:
    dir: {type: string}
  node_templates:
    here: {type: hpcwaas.nodes.Localhost, properties: {work_dir: {get_input: dir}}}
"""}, "required input 'dir' is missing", 5, None),
    "requirement_unknown_node": ({"s.yaml": HEADER + GOOD_NODES.replace("{host: here}", "{host: hre}")},
                                 'Node template "hre" was not found', 6, "app"),
    "cycle": ({"s.yaml": HEADER + """
topology_template:
  node_templates:
    a: {type: tosca.nodes.Root, requirements: [{dependency: b}]}
    b: {type: tosca.nodes.Root, requirements: [{dependency: c}]}
    c: {type: tosca.nodes.Root, requirements: [{dependency: a}]}
"""}, "dependency cycle: a -> b -> c -> a", 5, "a"),
    "type_derives_from_itself": ({"s.yaml": HEADER + """
node_types:
  x.A:
    derived_from: x.B
  x.B:
    derived_from: x.A
topology_template:
  node_templates:
    a: {type: x.A}
"""}, "type x.A derives from itself: x.A -> x.B -> x.A", 5, None),
    "unknown_function": ({"s.yaml": HEADER + GOOD_NODES.replace("/tmp/x", "{get_nodes_of_type: x}")},
                         "unknown function 'get_nodes_of_type'", 8, "app"),
    "bad_function_reference": ({"s.yaml": HEADER + GOOD_NODES.replace("/tmp/x", "{get_property: [here, nope]}")},
                               'Property "nope" was not found in node template "here"', None, None),
    "bad_operation_input_function": ({"s.yaml": HEADER + """
node_types:
  t.N:
    derived_from: tosca.nodes.Root
    interfaces:
      Standard:
        create:
          implementation: p.yml
          inputs: {x: {get_attribute: [SELF, missing_attr]}}
topology_template:
  node_templates:
    n: {type: t.N}
""", "p.yml": PLAY}, "declares no attribute or property 'missing_attr'", 8, "n"),
    "missing_artifact": ({"s.yaml": HEADER + """
topology_template:
  node_templates:
    n:
      type: tosca.nodes.Root
      interfaces:
        Standard:
          create: playbooks/nope.yml
"""}, "implementation file 'playbooks/nope.yml' does not exist", 9, "n"),
    "missing_node_artifact": ({"s.yaml": HEADER + """
topology_template:
  node_templates:
    n:
      type: tosca.nodes.Root
      artifacts:
        data: {file: files/data.bin, type: tosca.artifacts.File}
"""}, "artifact file 'files/data.bin' does not exist", 8, "n"),
    "implementation_escapes": ({"s.yaml": HEADER + """
topology_template:
  node_templates:
    n:
      type: tosca.nodes.Root
      interfaces:
        Standard:
          create: ../../etc/passwd.yml
"""}, "points outside", 9, None),
    "url_import": ({"s.yaml": HEADER + "imports:\n  - https://example.org/types.yaml\n" + GOOD_NODES},
                   "is a URL", 3, None),
    "missing_import": ({"s.yaml": HEADER + "imports:\n  - types/nope.yaml\n" + GOOD_NODES},
                       "imported file 'types/nope.yaml' does not exist", 3, None),
    "alias_bomb": ({"s.yaml": HEADER + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                              f"*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))}, "alias bomb", None, None),
    "duplicate_key": ({"s.yaml": HEADER + GOOD_NODES + "    app: {type: tosca.nodes.Root}\n"},
                      "duplicate key 'app'", 10, None),
    "unknown_implementation_type": ({"s.yaml": HEADER + """
topology_template:
  node_templates:
    n:
      type: tosca.nodes.Root
      interfaces:
        Standard:
          create: {implementation: {primary: {file: x, type: tosca.artifacts.Implementation.Bash}}}
"""}, "no executor for implementation type tosca.artifacts.Implementation.Bash", 9, "n"),
    "workflow_unknown_operation": ({"s.yaml": HEADER + GOOD_NODES + """
  workflows:
    execute:
      steps:
        s1:
          target: app
          activities:
            - call_operation: Standard.nope
"""}, "node 'app' has no operation 'Standard.nope'", 17, "app"),
    "workflow_unknown_step": ({"s.yaml": HEADER + GOOD_NODES + """
  workflows:
    execute:
      steps:
        s1:
          target: app
          activities: [{set_state: started}]
          on_success: [s2]
"""}, "links to unknown step 's2'", 14, None),
    "bad_input_value": ({"s.yaml": HEADER + """
topology_template:
  inputs:
    n: {type: integer, default: lots}
  node_templates:
    here: {type: hpcwaas.nodes.Localhost}
"""}, '"lots" is not an integer', None, None),
    "not_a_map": ({"s.yaml": "- just\n- a list\n"}, "must be a YAML map", 1, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_template_gives_one_clear_error(tmp_path: Path, case: str) -> None:
    files, expected, line, node = CASES[case]
    tpl = write(tmp_path, files)
    with pytest.raises(TemplateError) as info:
        validate_template(tpl)
    err = info.value
    first = err.issues[0]
    assert expected in str(err), [str(i) for i in err.issues]
    assert first.file is not None and (first.file.endswith("s.yaml") or first.file.endswith(".yaml"))
    if line is not None:
        assert first.line == line, str(err)
    if node is not None:
        assert first.node == node, str(err)


def test_catalogue_is_big_enough() -> None:
    assert len(CASES) + 3 >= 15  # plus the CSAR cases below


def _csar(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_csar_with_parent_paths_is_refused(tmp_path: Path) -> None:
    csar = _csar(tmp_path / "evil.csar", {"service.yaml": (HEADER + GOOD_NODES).encode(), "../evil.txt": b"x"})
    with pytest.raises(PackageError, match="outside the extraction folder"):
        validate_template(csar)
    assert not (tmp_path / "evil.txt").exists()


def test_csar_zip_bomb_is_refused(tmp_path: Path) -> None:
    csar = _csar(tmp_path / "bomb.csar", {"service.yaml": (HEADER + GOOD_NODES).encode(), "big": b"\0" * (64 << 20)})
    with pytest.raises(PackageError, match="compression ratio"):
        validate_template(csar)


def test_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csar"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(PackageError, match="not a valid zip"):
        validate_template(bad)


def test_unknown_input_given(tmp_path: Path) -> None:
    tpl = write(tmp_path, {"s.yaml": HEADER + GOOD_NODES})
    with pytest.raises(TemplateError, match="unknown input 'nope'"):
        validate_template(tpl, {"nope": 1})
    assert InputError  # the same check raises InputError from the engine's API


def test_tosca_parser_runs_under_limits_that_end_it() -> None:
    """tosca-parser is untrusted work in a child process: past its time it is stopped, not waited for."""
    from deployer import tosca_parser

    data = {"tosca_definitions_version": "tosca_simple_yaml_1_3",
            "topology_template": {"node_templates": {"a": {"type": "tosca.nodes.Root"}}}}
    assert tosca_parser.report(data, {}) == []
    with pytest.raises(tosca_parser.ParserStalled, match="did not finish within"):
        tosca_parser.report(data, {}, timeout=0.01)
    with pytest.raises(tosca_parser.ParserStalled, match="ran out of its 20 MiB"):
        tosca_parser.report(data, {}, memory=20 * 1024 * 1024)
