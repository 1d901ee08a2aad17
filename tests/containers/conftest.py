"""Image fixtures: the stack's real builder, and ONE real image built per test session.

Building takes one to two minutes, so the suite builds as few images as it can: ``hello_image``
is built once into a session store and *seeded* (hard-linked) into every other store a test
uses, which is exactly a cache hit for the code under test.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from containers.builder import Builder
from containers.service import ImageRef, ensure_image
from containers.store import ImageStore
from hpcwaas.settings import Settings
from hpcwaas.stack.info import StackInfo

HELLO_SPEC = """\
name: hello
base: {distro: debian, release: bookworm}
files: [{src: greet.sh, dest: /opt/app/greet.sh}]
env: {GREETING: "hello from hpcwaas"}
path: [/opt/app]
runscript: [greet.sh]
labels: {maintainer: team-a}
"""
GREET = '#!/bin/sh\necho "$GREETING on Debian $(cat /etc/debian_version): $*"\n'
# Fails in %post: apt-get cannot find the package.
MISSING_APT_SPEC = {"name": "broken", "apt": ["hpcwaas-no-such-package"]}


def write_hello_step(folder: Path) -> Path:
    """A step folder with the hello spec and its script; returns the spec's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image.yaml").write_text(HELLO_SPEC)
    (folder / "greet.sh").write_text(GREET)
    (folder / "greet.sh").chmod(0o755)
    return folder / "image.yaml"


@pytest.fixture(scope="session")
def builder_dir(stack: StackInfo) -> Path:
    """The stack's prepared builder, or a fast failure with what to run."""
    if stack.apptainer is None:
        pytest.fail("the stack has no Apptainer builder; run `python -m hpcwaas.stack up --only apptainer`",
                    pytrace=False)
    return stack.apptainer.tree.parent


@dataclass(frozen=True)
class BuiltImage:
    """The session's one real image and how long building it took."""

    ref: ImageRef
    store: ImageStore
    step: Path
    seconds: float


@pytest.fixture(scope="session")
def hello_image(builder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The hello image, really built once with apptainer (the suite's only successful build)."""
    step = tmp_path_factory.mktemp("hello-step")
    spec = write_hello_step(step)
    store_dir = tmp_path_factory.mktemp("image-store")
    settings = Settings(images_dir=store_dir, builder_dir=builder_dir, image_build_timeout=900)
    began = time.monotonic()
    ref = ensure_image(spec, settings=settings)
    return BuiltImage(ref, ImageStore(store_dir), step, time.monotonic() - began)


def seed(target: ImageStore, image: BuiltImage) -> None:
    """Put the built image into another store (hard links: instant), as if built there."""
    source = image.store.folder(image.ref.id)
    dest = target.folder(image.ref.id)
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, copy_function=os.link)


@pytest.fixture
def unavailable_builder(tmp_path: Path) -> Builder:
    """A builder whose tree was never prepared."""
    return Builder(tmp_path / "no-builder")
