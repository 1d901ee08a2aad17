"""Image fixtures: the stack's real builder, and ONE real image built per test session.

Building takes one to two minutes, so the suite builds as few images as it can: ``hello_image``
is built once into a session store and *seeded* (hard-linked) into every other store a test
uses, which is exactly a cache hit for the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from containers.builder import Builder
from containers.service import ImageRef
from containers.store import ImageStore
from hpcwaas.stack.info import StackInfo
from hpcwaas.stack.site_users import GATEWAY_USER
from tests.fixtures.gateway_user import gateway_owned_dir, give, run_as_gateway

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


_BUILD_AS_GATEWAY = """
import json, sys
from pathlib import Path
from containers.service import ensure_image
from hpcwaas.settings import Settings
step, store, builder = map(Path, sys.argv[1:4])
ref = ensure_image(step / "image.yaml", settings=Settings(images_dir=store, builder_dir=builder,
                                                         image_build_timeout=900))
print(json.dumps({"id": ref.id, "built": ref.built}))
"""


@pytest.fixture(scope="session")
def hello_image(builder_dir: Path) -> Iterator[BuiltImage]:
    """The hello image, really built once with apptainer (the suite's only successful build), by
    the gateway's unprivileged user through the build helper and its sudo rule, as the gateway
    builds in the demo and in production."""
    with gateway_owned_dir("hpcwaas-hello-") as folder:
        step, store_dir = folder / "step", folder / "store"
        write_hello_step(step)
        give(folder)
        began = time.monotonic()
        out = run_as_gateway(_BUILD_AS_GATEWAY.replace("sys.argv[1:4]", repr([str(step), str(store_dir),
                                                                               str(builder_dir)])),
                             cwd=folder)
        assert out.returncode == 0, f"the build as {GATEWAY_USER} failed:\n{out.stderr[-3000:]}"
        built = json.loads(out.stdout.strip().splitlines()[-1])
        store = ImageStore(store_dir)
        ref = ImageRef(built["id"], store.sif(built["id"]), built["built"])
        yield BuiltImage(ref, store, step, time.monotonic() - began)


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
