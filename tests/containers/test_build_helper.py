"""The image build helper's contract: the one thing the unprivileged gateway may run as root."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from containers.build_helper import MAX_REQUEST, Exit, RequestError, main, pack_request, read_request
from containers.render import render_spec
from containers.spec import parse_spec
from hpcwaas.stack.apptainer import BUILDS_INSIDE, IMAGE_BUILD_HELPER, SidTree
from hpcwaas.stack.site_users import GATEWAY_USER


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    body = buffer.getvalue()
    return io.BytesIO(len(body).to_bytes(8, "big") + body)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b"data"


def test_a_request_unpacks_its_definition_and_context(tmp_path: Path) -> None:
    request = pack_request("Bootstrap: debootstrap\n", {"bin/run.sh": (b"#!/bin/sh\n", True), "a.txt": (b"a", False)})
    read_request(io.BytesIO(request), tmp_path)
    assert (tmp_path / "image.def").read_text() == "Bootstrap: debootstrap\n"
    assert os.access(tmp_path / "context" / "bin" / "run.sh", os.X_OK)
    assert (tmp_path / "context" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("members", [
    [_entry("image.def"), _entry("context/x", tarfile.SYMTYPE, "/etc/shadow")],
    [_entry("image.def"), _entry("context/x", tarfile.LNKTYPE, "image.def")],
    [_entry("image.def"), _entry("context/../../escape")],
    [_entry("image.def"), _entry("/etc/cron.d/x")],
    [_entry("image.def"), _entry("etc/passwd")],
    [_entry("image.def"), _entry("context/dev", tarfile.CHRTYPE)],
    [_entry("context/a")],
    [_entry("image.def", tarfile.DIRTYPE)],
], ids=["symlink", "hardlink", "dotdot", "absolute", "outside-context", "device", "no-definition", "def-is-dir"])
def test_a_request_with_anything_else_is_refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with pytest.raises((RequestError, tarfile.TarError)):
        read_request(_tar(*members), tmp_path / "work")
    assert not (tmp_path / "escape").exists()


def test_a_request_too_large_or_cut_short_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="at most"):
        read_request(io.BytesIO((MAX_REQUEST + 1).to_bytes(8, "big")), tmp_path)
    whole = pack_request("x", {})
    with pytest.raises(RequestError, match="ended after"):
        read_request(io.BytesIO(whole[:100]), tmp_path)


def test_the_helper_refuses_bad_arguments_and_a_tree_others_could_change(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relative/dir", "--check"]) == Exit.UNAVAILABLE
    assert main([str(tmp_path)]) == Exit.UNAVAILABLE
    for key, timeout in [("UPPER", "10"), ("a/../b", "10"), ("ok", "0"), ("ok", "ten"), ("ok", "999999999")]:
        assert main([str(tmp_path), key, timeout]) == Exit.UNAVAILABLE
    assert "KEY must match" in capsys.readouterr().err
    if os.geteuid() == 0:  # root enters only a tree root alone could have written
        open_dir = tmp_path / "open"
        open_dir.mkdir(mode=0o777)
        open_dir.chmod(0o777)
        assert main([str(open_dir), "--check"]) == Exit.UNAVAILABLE
        assert "writable by root only" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), "--check"]) == Exit.UNAVAILABLE
    assert "not prepared" in capsys.readouterr().err


def test_only_the_gateways_user_may_run_the_helper(builder_dir: Path) -> None:
    """The sudo rule the stack installs: the gateway's user, nobody else; the status says why."""
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    allowed = subprocess.run(["runuser", "-u", GATEWAY_USER, "--", "sudo", "-n", str(IMAGE_BUILD_HELPER), "--check"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert f'"builder_dir": "{builder_dir}"' in allowed.stdout
    status = subprocess.run(
        ["runuser", "-u", "sciuser1", "--", sys.executable, "-c",
         "import sys; from pathlib import Path; from containers.builder import Builder; "
         "s = Builder(Path(sys.argv[1])).status(); print(s.available, s.reason, '|', s.hint)", str(builder_dir)],
        capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"False the user sciuser1 may not run {IMAGE_BUILD_HELPER}"), status.stdout
    assert "NOPASSWD" in status.stdout


@pytest.mark.slow
def test_closing_stdin_cancels_the_build_and_its_processes(builder_dir: Path) -> None:
    """A gateway that dies (its end of the pipe closes) leaves no build running."""
    if os.geteuid() != 0:
        pytest.skip("runs the helper directly, as root")
    key = f"cancel-test-{time.monotonic_ns()}"
    helper = subprocess.Popen([sys.executable, "-I", "-m", "containers.build_helper", str(builder_dir), key, "600"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert helper.stdin is not None and helper.stderr is not None
    helper.stdin.write(pack_request(render_spec(parse_spec({})).definition, {}))
    helper.stdin.flush()
    deadline = time.monotonic() + 60  # until apptainer runs (its output comes in blocks: not a signal)
    while not _running(key) and time.monotonic() < deadline and helper.poll() is None:
        time.sleep(0.2)
    assert _running(key), "the build never started"
    time.sleep(2)
    helper.stdin.close()
    rest = helper.stderr.read().decode(errors="replace")
    assert helper.wait(60) == Exit.CANCELLED, rest
    assert "# build cancelled by the caller" in rest
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and key.encode() in _cmdline(p)]
    assert leftovers == [], "processes of the cancelled build are still running"
    work = SidTree(builder_dir / "sid").host_path(f"{BUILDS_INSIDE}/{key}")
    assert not work.exists()
    shutil.rmtree(work, ignore_errors=True)


def _running(key: str) -> list[Path]:
    return [p for p in Path("/proc").iterdir()
            if p.name.isdigit() and key.encode() in (line := _cmdline(p)) and b"apptainer" in line]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
