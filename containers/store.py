"""The content-addressed image store and the inputs an image id is computed from.

An image id is the SHA-256 of the normalised spec (or Dockerfile), the step files it copies
(path, mode and content hash) and the builder version (Apptainer's version and the renderer's):
the same inputs never build twice. Layout under the store's root::

    images/<id>/image.sif   the image (written once, then only read or deleted)
    images/<id>/meta.json   name, size, sha256 digest, labels, builder, created_at
    images/<id>/image.def   the definition it was built from
    inputs/<id>/            the spec and step files (kept so a build can resume after a restart)
    logs/<build>.log        build logs
    locks/<id>.lock         one build per id at a time, across threads and processes (flock)

Pitfalls: ``images/<id>`` appears atomically (a rename of a complete folder), so a reader never
sees a half-written image; deleting an image while it is downloaded ends that download.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from containers.errors import ImageNotFound, SpecError
from containers.render import Rendered, render_dockerfile, render_spec
from containers.spec import REL_PATH, ImageSpec, check_inside, load_spec_text, parse_spec

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_STEP_BYTES = 1024 * 1024 * 1024  # what a step may copy into an image


@dataclass(frozen=True)
class StepFile:
    """A file of the step copied into the image."""

    data: bytes
    executable: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class BuildInputs:
    """Everything an image is made from: a spec or a Dockerfile, and the step files it copies."""

    kind: Literal["spec", "dockerfile"]
    spec: ImageSpec | None = None
    dockerfile: str | None = None
    files: dict[str, StepFile] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.spec.name if self.spec is not None else None

    def render(self, mirror: str) -> Rendered:
        """The definition (validated by :func:`containers.render.check_definition`)."""
        if self.spec is not None:
            return render_spec(self.spec, mirror=mirror)
        assert self.dockerfile is not None
        return render_dockerfile(self.dockerfile, mirror=mirror)

    def canonical(self) -> dict[str, Any]:
        """What the id hashes, besides the builder version."""
        if self.spec is not None:
            source: Any = self.spec.normalised()
        else:
            assert self.dockerfile is not None
            source = "\n".join(line.rstrip() for line in self.dockerfile.strip().splitlines())
        files = {path: {"sha256": f.sha256, "x": f.executable} for path, f in sorted(self.files.items())}
        return {"kind": self.kind, "source": source, "files": files}

    def image_id(self, builder_version: str) -> str:
        """The content address of the image these inputs make with this builder."""
        canon = json.dumps({**self.canonical(), "builder": builder_version}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    # ---- persistence of the inputs (to resume a build after a restart) ----------------------

    def save(self, folder: Path) -> None:
        """Write the inputs to ``folder`` (spec.json or Dockerfile, and files/)."""
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "files").mkdir(parents=True)
        if self.spec is not None:
            (tmp / "spec.json").write_text(self.spec.model_dump_json(indent=2))
        else:
            assert self.dockerfile is not None
            (tmp / "Dockerfile").write_text(self.dockerfile)
        for rel, step_file in self.files.items():
            target = tmp / "files" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(step_file.data)
            target.chmod(0o755 if step_file.executable else 0o644)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> BuildInputs:
        """Read inputs written by :meth:`save`."""
        files = {}
        base = folder / "files"
        for path in sorted(base.rglob("*")):
            if path.is_file():
                files[path.relative_to(base).as_posix()] = StepFile(path.read_bytes(),
                                                                    bool(path.stat().st_mode & stat.S_IXUSR))
        if (folder / "spec.json").exists():
            spec = ImageSpec.model_validate_json((folder / "spec.json").read_text())
            return cls("spec", spec=spec, files=files)
        return cls("dockerfile", dockerfile=(folder / "Dockerfile").read_text(), files=files)


def _collect(step_dir: Path, rels: tuple[str, ...]) -> dict[str, StepFile]:
    """The step files named by ``rels`` (a folder means every file below it), kept inside the step."""
    found: dict[str, StepFile] = {}
    total = 0
    base = step_dir.resolve()
    for rel in rels:
        target = check_inside(base, rel)
        if not target.exists():
            raise SpecError(f"files: {rel} does not exist in the step folder {step_dir}",
                            problems=[{"field": "files", "message": f"{rel} not found"}])
        paths = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for path in paths:
            resolved = check_inside(base, path.relative_to(base).as_posix()) if path != target else target
            data = resolved.read_bytes()
            total += len(data)
            if total > MAX_STEP_BYTES:
                raise SpecError(f"the step files copied into the image exceed {MAX_STEP_BYTES >> 20} MiB")
            found[path.relative_to(base).as_posix()] = StepFile(data, bool(resolved.stat().st_mode & stat.S_IXUSR))
    return found


def inputs_from_step(spec_path: Path, step_dir: Path | None = None) -> BuildInputs:
    """Inputs from an ``image.yaml`` or a ``Dockerfile``; step files are read from ``step_dir``
    (default: the spec's folder)."""
    step_dir = step_dir or spec_path.parent
    try:
        text = spec_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {spec_path}: {exc}", source=str(spec_path)) from exc
    if spec_path.name == "Dockerfile" or spec_path.suffix == ".dockerfile":
        rendered = render_dockerfile(text, source=str(spec_path))
        return BuildInputs("dockerfile", dockerfile=text, files=_collect(step_dir, rendered.files))
    spec = load_spec_text(text, source=str(spec_path))
    return BuildInputs("spec", spec=spec, files=_collect(step_dir, tuple(f.src for f in spec.files)))


def inputs_from_request(spec: dict[str, Any] | None, dockerfile: str | None,
                        files: dict[str, str] | None, executable: list[str] | None = None) -> BuildInputs:
    """Inputs sent over REST: a spec (mapping) or a Dockerfile, files as base64 by relative path,
    and which of them are executable (the mode is part of the image id)."""
    if (spec is None) == (dockerfile is None):
        raise SpecError("send exactly one of `spec` and `dockerfile`",
                        problems=[{"field": "spec", "message": "one of spec, dockerfile"}])
    decoded: dict[str, StepFile] = {}
    for rel, content in (files or {}).items():
        if not re.match(REL_PATH, rel) or ".." in PurePosixPath(rel).parts:
            raise SpecError(f"files: {rel!r} is not a plain relative path",
                            problems=[{"field": f"files.{rel}", "message": "not a plain relative path"}])
        try:
            decoded[rel] = StepFile(base64.b64decode(content, validate=True), rel in set(executable or ()))
        except (binascii.Error, ValueError) as exc:
            raise SpecError(f"files: {rel} is not valid base64",
                            problems=[{"field": f"files.{rel}", "message": "not base64"}]) from exc
    if spec is not None:
        parsed = parse_spec(spec)
        wanted: tuple[str, ...] = tuple(f.src for f in parsed.files)
        inputs = BuildInputs("spec", spec=parsed)
    else:
        assert dockerfile is not None
        wanted = render_dockerfile(dockerfile).files
        inputs = BuildInputs("dockerfile", dockerfile=dockerfile)
    picked: dict[str, StepFile] = {}
    for rel in wanted:
        below = {p: f for p, f in decoded.items() if p == rel or p.startswith(rel.rstrip("/") + "/")}
        if not below:
            raise SpecError(f"files: {rel} is copied into the image but was not sent",
                            problems=[{"field": "files", "message": f"{rel} missing"}])
        picked.update(below)
    return BuildInputs(inputs.kind, spec=inputs.spec, dockerfile=inputs.dockerfile, files=picked)


@dataclass(frozen=True)
class ImageMeta:
    """What the store knows about an image."""

    id: str
    name: str | None
    size: int
    sha256: str
    labels: dict[str, str]
    builder: str
    created_at: str
    definition: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "size": self.size, "digest": f"sha256:{self.sha256}",
            "labels": self.labels, "builder": self.builder, "created_at": self.created_at,
        }


def labels_of(definition: str) -> dict[str, str]:
    """The ``%labels`` of a definition."""
    labels: dict[str, str] = {}
    in_labels = False
    for line in definition.splitlines():
        if line.startswith("%"):
            in_labels = line.strip().lower() == "%labels"
            continue
        if in_labels and line.strip():
            key, _, value = line.strip().partition(" ")
            labels[key] = value.strip()
    return labels


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ImageStore:
    """Images by id under one root folder (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def check_id(image_id: str) -> str:
        if not IMAGE_ID.match(image_id):
            raise ImageNotFound(f"{image_id!r} is not an image id (64 hex characters)", image=image_id)
        return image_id

    def folder(self, image_id: str) -> Path:
        return self.root / "images" / self.check_id(image_id)

    def sif(self, image_id: str) -> Path:
        return self.folder(image_id) / "image.sif"

    def inputs_folder(self, image_id: str) -> Path:
        return self.root / "inputs" / self.check_id(image_id)

    def log_file(self, build_id: str) -> Path:
        if not re.match(r"^[0-9a-f]{32}$", build_id):
            raise ValueError(f"bad build id {build_id!r}")
        return self.root / "logs" / f"{build_id}.log"

    def has(self, image_id: str) -> bool:
        folder = self.folder(image_id)
        return (folder / "meta.json").exists() and (folder / "image.sif").exists()

    def inspect(self, image_id: str, *, definition: bool = True) -> ImageMeta:
        folder = self.folder(image_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImageNotFound(f"no image {image_id} in the store", image=image_id) from exc
        text = (folder / "image.def").read_text() if definition and (folder / "image.def").exists() else ""
        return ImageMeta(definition=text, **meta)

    def list(self) -> list[ImageMeta]:
        found = []
        images = self.root / "images"
        if images.is_dir():
            for folder in images.iterdir():
                if IMAGE_ID.match(folder.name) and self.has(folder.name):
                    with contextlib.suppress(ImageNotFound):
                        found.append(self.inspect(folder.name, definition=False))
        return sorted(found, key=lambda m: m.created_at, reverse=True)

    def add(self, image_id: str, sif: Path, *, definition: str, name: str | None, builder: str) -> ImageMeta:
        """Move a built SIF in (atomically visible); returns its metadata."""
        folder = self.folder(image_id)
        staging = folder.with_name(f".{image_id}.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        target = staging / "image.sif"
        shutil.move(str(sif), target)
        os.chown(target, os.getuid(), os.getgid())
        target.chmod(0o644)
        (staging / "image.def").write_text(definition)
        meta = ImageMeta(
            id=image_id, name=name, size=target.stat().st_size, sha256=file_sha256(target),
            labels=labels_of(definition), builder=builder,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        fields = {k: v for k, v in meta.__dict__.items() if k != "definition"}
        (staging / "meta.json").write_text(json.dumps(fields, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        return meta

    def delete(self, image_id: str) -> bool:
        """Remove an image and its saved inputs; False if it was not there."""
        folder = self.folder(image_id)
        existed = folder.exists()
        if existed:
            trash = folder.with_name(f".{image_id}.del{time.monotonic_ns()}")
            folder.rename(trash)  # vanishes at once for readers, then is removed
            shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(self.inputs_folder(image_id), ignore_errors=True)
        return existed

    @contextlib.contextmanager
    def lock(self, image_id: str) -> Iterator[None]:
        """Hold the build lock of an image id (blocks while another thread or process holds it).

        The descriptor is not inherited by children (Python's default), so a build process
        that outlives a crashed gateway does not keep the lock.
        """
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{self.check_id(image_id)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
