"""The image spec of a workflow step (``image.yaml``), validated before anything is rendered.

Every value that reaches the Singularity definition is checked against a strict pattern here
*and* quoted by the renderer: a spec cannot add a section, a header line or a shell command.
An error names the field (``apt.1``) and, for a file, its line::

    name: hello
    base: {distro: debian, release: bookworm}
    apt: [python3]
    pip: ["numpy==2.1.3"]
    files: [{src: run.py, dest: /opt/app/run.py}]
    env: {OMP_NUM_THREADS: "4"}
    path: [/opt/app/bin]
    runscript: [python3, /opt/app/run.py]
    labels: {maintainer: team-a}
    target: {arch: amd64, microarch: x86_64_v3}
    mpi: openmpi
    gpu: none
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from containers.errors import SpecError

# ---- patterns (every one anchored; \w is ASCII only through the explicit classes) ----------

APT_PACKAGE = r"^[a-z0-9][a-z0-9+.-]{0,99}(=[A-Za-z0-9.+~:-]{1,64})?$"
_PIP_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,99})?(\[[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\])?"
_PIP_CLAUSE = r"(===|==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]{1,64}"
PIP_REQUIREMENT = rf"^{_PIP_NAME}({_PIP_CLAUSE}(,{_PIP_CLAUSE})*)?$"
NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Literal text: no quotes, backslash, '$', backtick, newline or other control character.
TEXT = r"^[A-Za-z0-9 _.,:/=+@%~()\[\]{}#-]*$"
LABEL_KEY = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
REL_PATH = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$"
ABS_PATH = r"^(/[A-Za-z0-9_][A-Za-z0-9_.-]*)+/?$"

AptPackage = Annotated[str, StringConstraints(pattern=APT_PACKAGE)]
PipRequirement = Annotated[str, StringConstraints(pattern=PIP_REQUIREMENT)]
Text = Annotated[str, StringConstraints(pattern=TEXT, max_length=1024)]
Arg = Annotated[str, StringConstraints(pattern=TEXT, min_length=1, max_length=1024)]
AbsPath = Annotated[str, StringConstraints(pattern=ABS_PATH, max_length=1024)]

# Environment variables a spec may not set: they would change how the runtime or loader work.
RESERVED_ENV = re.compile(r"^(PATH|HOME|USER|LD_.*|APPTAINER.*|SINGULARITY.*|CFLAGS|CXXFLAGS|FFLAGS|FCFLAGS)$")
# Destinations owned by the runtime or the kernel.
RESERVED_DEST = ("/proc", "/sys", "/dev", "/.singularity.d", "/.exec", "/.run", "/.shell", "/.test", "/etc/hosts",
                 "/etc/resolv.conf", "/etc/passwd", "/etc/group")

RELEASES = ("bookworm", "trixie", "forky", "sid")
ARCHES = ("amd64", "arm64", "ppc64el")

# Target microarchitectures (Spack's names) and the compiler flags builds get for them.
MICROARCH_FLAGS: dict[str, tuple[str, str]] = {
    # name: (Debian arch, flags)
    "generic": ("", "-O2"),
    "x86_64": ("amd64", "-O2 -march=x86-64 -mtune=generic"),
    "x86_64_v2": ("amd64", "-O2 -march=x86-64-v2 -mtune=generic"),
    "x86_64_v3": ("amd64", "-O2 -march=x86-64-v3 -mtune=generic"),
    "x86_64_v4": ("amd64", "-O2 -march=x86-64-v4 -mtune=generic"),
    "haswell": ("amd64", "-O2 -march=haswell -mtune=haswell"),
    "broadwell": ("amd64", "-O2 -march=broadwell -mtune=broadwell"),
    "skylake": ("amd64", "-O2 -march=skylake -mtune=skylake"),
    "skylake_avx512": ("amd64", "-O2 -march=skylake-avx512 -mtune=skylake-avx512"),
    "cascadelake": ("amd64", "-O2 -march=cascadelake -mtune=cascadelake"),
    "icelake": ("amd64", "-O2 -march=icelake-server -mtune=icelake-server"),
    "sapphirerapids": ("amd64", "-O2 -march=sapphirerapids -mtune=sapphirerapids"),
    "zen2": ("amd64", "-O2 -march=znver2 -mtune=znver2"),
    "zen3": ("amd64", "-O2 -march=znver3 -mtune=znver3"),
    "zen4": ("amd64", "-O2 -march=znver4 -mtune=znver4"),
    "aarch64": ("arm64", "-O2 -march=armv8-a"),
    "neoverse_n1": ("arm64", "-O2 -mcpu=neoverse-n1"),
    "neoverse_v1": ("arm64", "-O2 -mcpu=neoverse-v1"),
    "neoverse_v2": ("arm64", "-O2 -mcpu=neoverse-v2"),
    "a64fx": ("arm64", "-O2 -mcpu=a64fx"),
    "power9le": ("ppc64el", "-O2 -mcpu=power9 -mtune=power9"),
    "power10le": ("ppc64el", "-O2 -mcpu=power10 -mtune=power10"),
}

# What an MPI or GPU flavour adds to the image (Debian packages).
MPI_PACKAGES: dict[str, tuple[str, ...]] = {
    "none": (),
    "openmpi": ("openmpi-bin", "libopenmpi-dev"),
    "mpich": ("mpich", "libmpich-dev"),
}
GPU_PACKAGES: dict[str, tuple[str, ...]] = {
    "none": (),
    "cuda": ("nvidia-cuda-toolkit",),  # from contrib/non-free: the renderer enables the components
    "rocm": ("hipcc",),
    "opencl": ("ocl-icd-libopencl1", "ocl-icd-opencl-dev"),
}
GPU_COMPONENTS: dict[str, tuple[str, ...]] = {"cuda": ("main", "contrib", "non-free", "non-free-firmware")}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Base(_Strict):
    """The base system: a Debian release bootstrapped from the mirror."""

    distro: Literal["debian"] = "debian"
    release: Literal["bookworm", "trixie", "forky", "sid"] = "bookworm"


class FileCopy(_Strict):
    """A file or folder of the step copied into the image."""

    src: Annotated[str, StringConstraints(pattern=REL_PATH, max_length=1024)] = Field(
        description="Path relative to the step folder; `..` is refused."
    )
    dest: AbsPath = Field(description="Absolute path in the image.")

    @field_validator("src")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if any(part in ("..", ".") for part in value.split("/")):
            raise ValueError("must stay inside the step folder ('.' and '..' are refused)")
        return value

    @field_validator("dest")
    @classmethod
    def _allowed_dest(cls, value: str) -> str:
        parts = value.rstrip("/").split("/")
        if any(part in ("..", ".") for part in parts):
            raise ValueError("'.' and '..' are refused")
        if value in ("/", "") or any(value == r or value.startswith(r + "/") for r in RESERVED_DEST):
            raise ValueError(f"{value} is owned by the container runtime")
        return value


class Target(_Strict):
    """The machine the image is for: Debian architecture and microarchitecture (compiler flags)."""

    arch: Literal["amd64", "arm64", "ppc64el"] = "amd64"
    microarch: str = "generic"

    @field_validator("microarch")
    @classmethod
    def _known_microarch(cls, value: str) -> str:
        if value not in MICROARCH_FLAGS:
            raise ValueError(f"unknown microarchitecture; choose among {', '.join(MICROARCH_FLAGS)}")
        return value

    @model_validator(mode="after")
    def _matches_arch(self) -> Target:
        needed = MICROARCH_FLAGS[self.microarch][0]
        if needed and needed != self.arch:
            raise ValueError(f"microarch {self.microarch} is a {needed} target, not {self.arch}")
        return self

    @property
    def flags(self) -> str:
        """The compiler flags builds in the image get (CFLAGS, CXXFLAGS, FFLAGS)."""
        return MICROARCH_FLAGS[self.microarch][1]


class ImageSpec(_Strict):
    """``image.yaml``: what goes into an image. Lists are sets: order does not change the image."""

    name: Annotated[str, StringConstraints(pattern=NAME)] | None = Field(
        default=None, description="A short name shown in listings (not part of the image id)."
    )
    base: Base = Base()
    apt: list[AptPackage] = Field(default_factory=list, max_length=500)
    pip: list[PipRequirement] = Field(default_factory=list, max_length=500)
    files: list[FileCopy] = Field(default_factory=list, max_length=200)
    env: dict[Annotated[str, StringConstraints(pattern=ENV_NAME)], Text] = Field(default_factory=dict)
    path: list[AbsPath] = Field(default_factory=list, max_length=20, description="Prepended to PATH.")
    runscript: list[Arg] | None = Field(default=None, max_length=64, description="argv run by `apptainer run`.")
    labels: dict[Annotated[str, StringConstraints(pattern=LABEL_KEY)],
                 Annotated[str, StringConstraints(pattern=TEXT, max_length=256)]] = Field(default_factory=dict)
    target: Target = Target()
    mpi: Literal["none", "openmpi", "mpich"] = "none"
    gpu: Literal["none", "cuda", "rocm", "opencl"] = "none"

    @field_validator("env")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if RESERVED_ENV.match(key):
                raise ValueError(f"{key} is set by the image service or the runtime (use `path` or `target`)")
        return value

    @field_validator("labels")
    @classmethod
    def _no_runtime_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.lower().startswith(("org.label-schema", "hpcwaas.")):
                raise ValueError(f"label {key} is set by the image service")
        return value

    @field_validator("files")
    @classmethod
    def _unique_destinations(cls, value: list[FileCopy]) -> list[FileCopy]:
        dests = [f.dest.rstrip("/") for f in value]
        if len(set(dests)) != len(dests):
            raise ValueError("two entries copy to the same destination")
        return value

    # ---- derived ---------------------------------------------------------------------------

    def normalised(self) -> dict[str, Any]:
        """The canonical form hashed into the image id: sets sorted, defaults filled, no name."""
        data = self.model_dump(mode="json", exclude={"name"})
        data["apt"] = sorted(set(self.apt))
        data["pip"] = sorted(set(self.pip), key=str.lower)
        data["files"] = sorted(data["files"], key=lambda f: (f["dest"], f["src"]))
        return data

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`normalised`."""
        canon = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def all_apt_packages(self) -> list[str]:
        """The spec's packages plus what pip, MPI and GPU flavours need, sorted."""
        extra: set[str] = set(MPI_PACKAGES[self.mpi]) | set(GPU_PACKAGES[self.gpu])
        if self.pip:
            extra |= {"python3", "python3-venv"}
        return sorted(set(self.apt) | extra)

    def components(self) -> tuple[str, ...]:
        """Debian archive components the image needs."""
        return GPU_COMPONENTS.get(self.gpu, ("main",))


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    problems = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ())) or "(spec)"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append({"field": field, "message": message})
    return problems


def _line_of(node: yaml.Node | None, field: str) -> int | None:
    """The 1-based line of a dotted field path in a composed YAML document, if it is there."""
    for part in field.split("."):
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            break
    return node.start_mark.line + 1 if node is not None else None


def parse_spec(data: Any, *, source: str = "spec", text: str | None = None) -> ImageSpec:
    """Validate a spec (a mapping); :class:`SpecError` names every bad field (and line, from ``text``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping, not {type(data).__name__}", source=source)
    try:
        return ImageSpec.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        if text is not None:
            try:
                root = yaml.compose(text, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                root = None
            for problem in problems:
                line = _line_of(root, problem["field"])
                if line is not None:
                    problem["line"] = line
        first = problems[0]
        where = f"{source}:{first['line']}" if "line" in first else source
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(f"{where}: {first['field']}: {first['message']}{more}", problems=problems,
                        source=source) from exc


def load_spec_text(text: str, *, source: str = "image.yaml") -> ImageSpec:
    """Parse and validate YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}", source=source) from exc
    return parse_spec(data, source=source, text=text)


def load_spec(path: Path) -> ImageSpec:
    """Read and validate an ``image.yaml``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}", source=str(path)) from exc
    return load_spec_text(text, source=str(path))


def check_inside(step_dir: Path, rel: str) -> Path:
    """``step_dir/rel`` resolved, refusing anything that leaves ``step_dir`` (symlinks included)."""
    base = step_dir.resolve()
    target = (base / PurePosixPath(rel)).resolve()
    if target != base and base not in target.parents:
        raise SpecError(f"files: {rel} leaves the step folder", problems=[{"field": "files", "message": rel}])
    return target
