"""Specs and Dockerfiles to Singularity/Apptainer definitions, through spython's recipe writer.

The recipe (files, labels, environment, ``%post``, runscript) is filled from a validated
:class:`~containers.spec.ImageSpec` with every value quoted, and written by spython's
``SingularityWriter``. Its ``Bootstrap: docker`` header is replaced by ``Bootstrap: debootstrap``
from the Debian mirror, because no registry is reachable from the builder. A Dockerfile in the
step is parsed by spython's ``DockerParser`` the same way (``FROM debian:<release>`` only).

:func:`check_definition` then re-reads the result: only known header keys and sections (never
``%setup``, which would run on the builder host), and ``%files`` sources inside the build
context. It is the last line of defence if a pattern in the spec were ever too loose.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spython.logger import bot
from spython.logger.message import ABORT
from spython.main.parse.parsers.docker import DockerParser
from spython.main.parse.recipe import Recipe
from spython.main.parse.writers.singularity import SingularityWriter

from containers.errors import SpecError
from containers.spec import ABS_PATH, REL_PATH, RELEASES, ImageSpec

# Bumped whenever the rendering changes, so images rendered differently get another id.
RENDER_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CONTEXT = "context"  # the build context folder, relative to the build's working directory
VENV = "/opt/venv"

HEADER_KEYS = {"Bootstrap", "OSVersion", "MirrorURL", "Include"}
SECTIONS = {"files", "labels", "post", "environment", "runscript", "startscript", "test", "help"}
_SECTION = re.compile(r"^%([A-Za-z]+)\b(.*)$")


@dataclass(frozen=True)
class Rendered:
    """A definition and the step files its ``%files`` section copies (paths relative to the step)."""

    definition: str
    files: tuple[str, ...]


def _header(release: str, mirror: str) -> str:
    return f"Bootstrap: debootstrap\nOSVersion: {release}\nMirrorURL: {mirror}\n"


def _with_header(written: str, release: str, mirror: str) -> str:
    """spython's output with its docker header (Bootstrap/From/Stage) replaced by ours."""
    lines = written.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("%")), len(lines))
    body = "\n".join(lines[first:])
    return _header(release, mirror) + "\n" + body.strip("\n") + "\n"


def _write(recipe: Recipe, runscript_default: str = "/bin/bash") -> str:
    writer = SingularityWriter({"spython-base": recipe})
    return str(writer.convert(runscript=runscript_default))


def spec_recipe(spec: ImageSpec, *, mirror: str = DEFAULT_MIRROR, spec_digest: str | None = None) -> Recipe:
    """An spython Recipe for the spec; every value is quoted for the shell that reads it."""
    q = shlex.quote
    recipe = Recipe()
    recipe.fromHeader = f"debian:{spec.base.release}"  # replaced by the debootstrap header
    recipe.files = [[f"{CONTEXT}/{f.src}", q(f.dest)] for f in sorted(spec.files, key=lambda f: f.dest)]
    labels = {
        "hpcwaas.release": spec.base.release,
        "hpcwaas.arch": spec.target.arch,
        "hpcwaas.microarch": spec.target.microarch,
        "hpcwaas.mpi": spec.mpi,
        "hpcwaas.gpu": spec.gpu,
        **({"hpcwaas.spec-digest": spec_digest} if spec_digest else {}),
        **spec.labels,
    }
    recipe.labels = [[key, value] for key, value in sorted(labels.items())]
    flags = q(spec.target.flags)
    path = [*(["/opt/venv/bin"] if spec.pip else []), *spec.path]
    recipe.environ = [f"{k}={q(v)}" for k, v in sorted(spec.env.items())]
    recipe.environ += [f"CFLAGS={flags}", f"CXXFLAGS={flags}", f"FFLAGS={flags}", f"FCFLAGS={flags}"]
    if path:
        recipe.environ.append("PATH=" + ":".join(q(p) for p in path) + ':"$PATH"')
    post = [
        "set -eu",
        "export DEBIAN_FRONTEND=noninteractive",
        f"export CFLAGS={flags} CXXFLAGS={flags} FFLAGS={flags} FCFLAGS={flags}",
    ]
    packages = spec.all_apt_packages()
    if packages:
        components = " ".join(spec.components())
        post += [
            f"echo {q(f'deb {mirror} {spec.base.release} {components}')} > /etc/apt/sources.list",
            "apt-get update",
            "apt-get install -y --no-install-recommends " + " ".join(q(p) for p in packages),
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        ]
    if spec.pip:
        post += [
            f"python3 -m venv {VENV}",
            f"{VENV}/bin/pip install --no-cache-dir --disable-pip-version-check "
            + " ".join(q(r) for r in sorted(set(spec.pip), key=str.lower)),
        ]
    recipe.install = post
    if spec.runscript:
        recipe.entrypoint = [q(arg) for arg in spec.runscript]
    return recipe


def render_spec(spec: ImageSpec, *, mirror: str = DEFAULT_MIRROR) -> Rendered:
    """The definition of a validated spec."""
    text = _with_header(_write(spec_recipe(spec, mirror=mirror, spec_digest=spec.digest())),
                        spec.base.release, mirror)
    rendered = Rendered(text, tuple(sorted({f.src for f in spec.files})))
    check_definition(rendered.definition)
    return rendered


_FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+\S+)?\s*$", re.IGNORECASE)
_DEBIAN = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:(?P<release>[a-z]+)(?:-slim)?$")


def render_dockerfile(text: str, *, mirror: str = DEFAULT_MIRROR, source: str = "Dockerfile") -> Rendered:
    """Convert a Dockerfile with spython; only ``FROM debian:<release>`` can be built (no registry)."""
    froms = [(n, m.group(1)) for n, line in enumerate(text.splitlines(), 1) if (m := _FROM.match(line.strip()))]
    if len(froms) != 1:
        raise SpecError(f"{source}: exactly one FROM line is supported (found {len(froms)})",
                        problems=[{"field": "FROM", "message": "one stage only"}], source=source)
    line_no, image = froms[0]
    match = _DEBIAN.match(image)
    if match is None or match.group("release") not in RELEASES:
        raise SpecError(
            f"{source}:{line_no}: FROM {image}: only debian:<{'|'.join(RELEASES)}> bases can be built "
            "(the builder bootstraps from the Debian mirror; no registry is reachable)",
            problems=[{"field": "FROM", "message": image, "line": line_no}], source=source,
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Dockerfile"
        path.write_text(text)
        try:
            # spython logs on its own streams and calls sys.exit on errors: keep both contained.
            with _quiet_spython():
                recipes = DockerParser(str(path), load=False).parse()
        except (SystemExit, Exception) as exc:
            raise SpecError(f"{source}: spython cannot parse it: {exc}", source=source) from exc
    if len(recipes) != 1:
        raise SpecError(f"{source}: multi-stage Dockerfiles are not supported", source=source)
    recipe = next(iter(recipes.values()))
    sources: list[str] = []
    files = []
    for pair in recipe.files:
        src, dest = pair[0], pair[1]
        if not re.match(REL_PATH, src.removeprefix("./")) or ".." in PurePosixPath(src).parts:
            raise SpecError(f"{source}: COPY/ADD source {src} must be a plain path inside the step folder",
                            problems=[{"field": "COPY", "message": src}], source=source)
        if not re.match(ABS_PATH, dest):
            raise SpecError(f"{source}: COPY/ADD destination {dest} must be a plain absolute path",
                            problems=[{"field": "COPY", "message": dest}], source=source)
        rel = str(PurePosixPath(src.removeprefix("./")))
        sources.append(rel)
        files.append([f"{CONTEXT}/{rel}", dest])
    recipe.files = files
    written = _write(recipe)
    rendered = Rendered(_with_header(written, match.group("release"), mirror), tuple(sorted(set(sources))))
    check_definition(rendered.definition)
    return rendered


@contextlib.contextmanager
def _quiet_spython() -> Iterator[None]:
    saved = bot.level
    bot.level = ABORT
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        bot.level = saved


def check_definition(text: str) -> None:
    """Refuse a definition with unknown header keys or sections, ``%setup``, or outside sources."""
    in_header = True
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        found = _SECTION.match(line)
        if found:
            in_header = False
            section = found.group(1).lower()
            if section not in SECTIONS:
                raise SpecError(f"definition line {number}: section %{section} is not allowed",
                                problems=[{"field": "definition", "line": number, "message": line[:80]}])
            continue
        if in_header:
            if not line.strip():
                continue
            key, sep, value = line.partition(":")
            if not sep or key.strip() not in HEADER_KEYS:
                raise SpecError(f"definition line {number}: header {key.strip()!r} is not allowed")
            if key.strip() == "Bootstrap" and value.strip() != "debootstrap":
                raise SpecError(f"definition line {number}: only `Bootstrap: debootstrap` is built here")
            continue
        if section == "files" and line.strip():
            src = line.split()[0]
            rel = PurePosixPath(src)
            if not src.startswith(f"{CONTEXT}/") or ".." in rel.parts:
                raise SpecError(f"definition line {number}: %files source {src} is outside the build context")
