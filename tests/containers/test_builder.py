"""Real Apptainer builds in the stack's builder tree (slow: one real image per session)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from containers.builder import Builder
from containers.errors import BuilderUnavailable
from containers.service import ensure_image
from containers.spec import load_spec
from hpcwaas.settings import Settings
from hpcwaas.stack.apptainer import BUILD_UID, BUILDS_INSIDE, SidTree
from tests.containers.conftest import BuiltImage

pytestmark = pytest.mark.slow


def run_in_tree(builder_dir: Path, sif: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run apptainer on a copy of ``sif`` inside the builder tree, as its build user."""
    tree = SidTree(builder_dir / "sid")
    inside = f"{BUILDS_INSIDE}/test-run-{time.monotonic_ns()}"
    work = tree.host_path(inside)
    work.mkdir(parents=True)
    try:
        shutil.copy(sif, work / "image.sif")
        for path in (work, work / "image.sif"):
            import os

            os.chown(path, BUILD_UID, BUILD_UID)
        return subprocess.run(tree.command(["apptainer", *argv], cwd=inside), capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_built_image_runs_its_runscript(hello_image: BuiltImage, builder_dir: Path) -> None:
    assert hello_image.ref.built and hello_image.ref.path.stat().st_size > 1_000_000
    out = run_in_tree(builder_dir, hello_image.ref.path, "run", "image.sif", "from", "a", "test")
    assert out.returncode == 0, out.stderr
    assert "hello from hpcwaas on Debian 12" in out.stdout and out.stdout.rstrip().endswith(": from a test")


def test_built_image_exec_and_labels(hello_image: BuiltImage, builder_dir: Path) -> None:
    out = run_in_tree(builder_dir, hello_image.ref.path, "exec", "image.sif", "sh", "-c",
                      'test -x /opt/app/greet.sh && echo "$CFLAGS|$PATH"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-O2|/opt/app:")
    labels = run_in_tree(builder_dir, hello_image.ref.path, "inspect", "image.sif")
    assert "maintainer: team-a" in labels.stdout and "hpcwaas.release: bookworm" in labels.stdout
    meta = hello_image.store.inspect(hello_image.ref.id)
    assert meta.labels["maintainer"] == "team-a" and len(meta.sha256) == 64
    assert meta.definition.startswith("Bootstrap: debootstrap")


def test_same_spec_again_is_a_cache_hit(hello_image: BuiltImage, builder_dir: Path) -> None:
    settings = Settings(images_dir=hello_image.store.root, builder_dir=builder_dir)
    began = time.monotonic()
    again = ensure_image(hello_image.step / "image.yaml", settings=settings)
    elapsed = time.monotonic() - began
    assert again.id == hello_image.ref.id and again.built is False
    assert elapsed < 1.0, f"cache hit took {elapsed:.3f}s"
    # The build log shows one real build, secrets-free, with apptainer's own lines.
    logs = list((hello_image.store.root / "logs").glob("*.log"))
    assert len(logs) == 1 and "INFO:    Build complete" in logs[0].read_text()


def test_ensure_image_without_builder_is_a_clear_error(tmp_path: Path, hello_image: BuiltImage) -> None:
    settings = Settings(images_dir=tmp_path / "store", builder_dir=tmp_path / "nothing")
    began = time.monotonic()
    with pytest.raises(BuilderUnavailable, match="not prepared") as caught:
        ensure_image(hello_image.step / "image.yaml", settings=settings)
    assert "stack up --only apptainer" in (caught.value.hint or "")
    assert time.monotonic() - began < 2


def test_cross_arch_build_is_refused_before_building(builder_dir: Path, tmp_path: Path) -> None:
    spec_path = tmp_path / "image.yaml"
    spec_path.write_text("target: {arch: ppc64el}\n")
    spec = load_spec(spec_path)
    from containers.errors import SpecError
    from containers.render import render_spec

    with pytest.raises(SpecError, match=r"target\.arch: ppc64el images cannot be built"):
        Builder(builder_dir).build(render_spec(spec).definition, {}, key="arch-test", log_file=tmp_path / "log",
                                   arch=spec.target.arch)


def test_a_build_over_its_timeout_is_stopped_with_its_processes(builder_dir: Path, tmp_path: Path) -> None:
    from containers.errors import BuildFailed
    from containers.render import render_spec
    from containers.spec import parse_spec

    key = f"timeout-test-{time.monotonic_ns()}"
    pids: list[int] = []
    builder = Builder(builder_dir, timeout=3)
    began = time.monotonic()
    with pytest.raises(BuildFailed, match="did not finish within 3s"):
        builder.build(render_spec(parse_spec({})).definition, {}, key=key, log_file=tmp_path / "build.log",
                      on_process=pids.append)
    assert time.monotonic() - began < 30
    assert "# build killed after 3s" in (tmp_path / "build.log").read_text()
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and key.encode() in _cmdline(p)]
    assert leftovers == [], "processes of the killed build are still running"
    assert not (builder.tree.host_path(f"{BUILDS_INSIDE}/{key}")).exists()


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
