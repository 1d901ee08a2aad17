"""Rendering through spython's writer, Dockerfile conversion, and the definition's last check."""

from __future__ import annotations

import pytest

from containers.errors import SpecError
from containers.render import check_definition, render_dockerfile, render_spec, spec_recipe
from containers.spec import parse_spec


def sections(definition: str) -> list[str]:
    return [line.split()[0] for line in definition.splitlines() if line.startswith("%")]


def test_spec_renders_a_debootstrap_definition() -> None:
    spec = parse_spec({
        "name": "app", "base": {"release": "trixie"}, "apt": ["python3", "cowsay"], "pip": ["requests==2.32.3"],
        "files": [{"src": "run.py", "dest": "/opt/app/run.py"}], "env": {"GREETING": "hello world"},
        "path": ["/opt/app"], "runscript": ["python3", "/opt/app/run.py"], "labels": {"maintainer": "team-a"},
        "target": {"microarch": "x86_64_v3"}, "mpi": "mpich",
    })
    text = render_spec(spec, mirror="http://deb.debian.org/debian").definition
    assert text.startswith("Bootstrap: debootstrap\nOSVersion: trixie\nMirrorURL: http://deb.debian.org/debian\n")
    assert "From:" not in text and "Stage:" not in text  # spython's docker header is replaced
    assert sections(text) == ["%files", "%labels", "%post", "%environment", "%runscript", "%startscript"]
    assert "context/run.py /opt/app/run.py" in text
    assert "apt-get install -y --no-install-recommends cowsay libmpich-dev mpich python3 python3-venv" in text
    assert "/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check requests==2.32.3" in text
    assert "export GREETING='hello world'" in text
    assert "export CFLAGS='-O2 -march=x86-64-v3 -mtune=generic'" in text
    assert 'export PATH=/opt/venv/bin:/opt/app:"$PATH"' in text
    assert 'exec python3 /opt/app/run.py "$@"' in text
    assert "hpcwaas.mpi mpich" in text and "maintainer team-a" in text
    assert f"hpcwaas.spec-digest {spec.digest()}" in text


def test_recipe_is_spythons() -> None:
    recipe = spec_recipe(parse_spec({"env": {"A": "b"}}))
    assert type(recipe).__module__ == "spython.main.parse.recipe"
    assert recipe.environ[0] == "A=b"


def test_rendering_is_deterministic_whatever_the_order() -> None:
    a = parse_spec({"apt": ["b", "a"], "env": {"Y": "1", "X": "2"}})
    b = parse_spec({"apt": ["a", "b"], "env": {"X": "2", "Y": "1"}})
    assert render_spec(a).definition == render_spec(b).definition


def test_values_are_quoted_even_when_patterns_allow_spaces() -> None:
    text = render_spec(parse_spec({"runscript": ["echo", "two words", "#not-a-comment"]})).definition
    assert "exec echo 'two words' '#not-a-comment' \"$@\"" in text


def test_dockerfile_is_converted_with_spython() -> None:
    rendered = render_dockerfile(
        "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y python3\n"
        "COPY app.py /opt/app.py\nENV MODE=fast\nENTRYPOINT [\"python3\", \"/opt/app.py\"]\n"
    )
    text = rendered.definition
    assert text.startswith("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    assert rendered.files == ("app.py",)
    assert "context/app.py /opt/app.py" in text
    assert "apt-get update && apt-get install -y python3" in text
    assert "export MODE=fast" in text
    assert 'exec python3 /opt/app.py "$@"' in text
    assert text.count("context/app.py") == 1


@pytest.mark.parametrize(
    ("dockerfile", "match"),
    [
        ("FROM ubuntu:24.04\nRUN true\n", r"Dockerfile:1: FROM ubuntu:24.04: only debian"),
        ("FROM debian:bookworm AS a\nFROM debian:bookworm\n", "exactly one FROM"),
        ("FROM debian:bookworm\nCOPY ../../etc/shadow /x\n", "inside the step folder"),
        ("FROM debian:bookworm\nCOPY /etc/shadow /x\n", "inside the step folder"),
        ("FROM debian:bookworm\nCOPY a.txt /x;id\n", "plain absolute path"),
        ("FROM debian:bookworm\nRUN true\n%setup\ntouch /host-file\n", "%setup is not allowed"),
    ],
)
def test_bad_dockerfiles_are_refused(dockerfile: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        render_dockerfile(dockerfile)


@pytest.mark.parametrize(
    ("definition", "match"),
    [
        ("Bootstrap: docker\nFrom: evil/image\n%post\ntrue\n", "only `Bootstrap: debootstrap`"),
        ("Bootstrap: debootstrap\nFrom: evil/image\n%post\ntrue\n", "header 'From' is not allowed"),
        ("Bootstrap: localimage\n%post\ntrue\n", "only `Bootstrap: debootstrap`"),
        ("Bootstrap: debootstrap\n%setup\ntouch $APPTAINER_ROOTFS/../x\n", "%setup is not allowed"),
        ("Bootstrap: debootstrap\n%pre\nid\n", "%pre is not allowed"),
        ("Bootstrap: debootstrap\n%files\n/etc/shadow /x\n", "outside the build context"),
        ("Bootstrap: debootstrap\n%files\ncontext/../../x /x\n", "outside the build context"),
    ],
)
def test_check_definition_is_the_last_line_of_defence(definition: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        check_definition(definition)
