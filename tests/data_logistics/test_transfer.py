"""The transfer engine against the real sshd (no Airflow): streaming, tar, resume, checksums, confinement."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_logistics import transfer
from data_logistics.errors import (
    ChecksumMismatch,
    DestinationExists,
    PathOutsideWorkDir,
    SourceUnavailable,
    StagingError,
)
from data_logistics.openssh import OpenSSHLink
from data_logistics.transfer import (
    HttpFile,
    LocalDestination,
    LocalFile,
    LocalTree,
    Progress,
    SiteDestination,
    copy_file,
    copy_tree,
)
from hpcwaas.ssh import SSHSession
from tests.data_logistics.conftest import make_file, make_tree

pytestmark = pytest.mark.site

MiB = 1024 * 1024


def _remote_sha(session: SSHSession, path: str) -> str:
    return session.run(["sha256sum", "--", path], check=True).stdout.split()[0]


def _listing(session: SSHSession, directory: str) -> list[str]:
    return sorted(session.run(["ls", "-A1", "--", directory], check=True).stdout.splitlines())


def test_big_file_is_streamed_verified_and_renamed_into_place(tmp_path: Path, session: SSHSession,
                                                               work_dir: str) -> None:
    digest = make_file(tmp_path / "big.bin", 48 * MiB)
    seen: list[Progress] = []
    result = copy_file(LocalFile(tmp_path / "big.bin"), SiteDestination(session, work_dir), "in/big.bin",
                       progress=seen.append)
    assert result.sha256 == digest and result.size == 48 * MiB and result.resumed_from == 0
    assert result.path == f"{work_dir}/in/big.bin"
    assert _remote_sha(session, result.path) == digest
    assert _listing(session, f"{work_dir}/in") == ["big.bin"]  # no temporary file left
    phases = [p.phase for p in seen]
    assert phases[0] == "transferring" and phases[-1] == "done" and "verifying" in phases
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and seen[-1].bytes_total == 48 * MiB and seen[-1].files_done == 1


def test_many_small_files_travel_as_one_tar_stream(tmp_path: Path, session: SSHSession, work_dir: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    expected = make_tree(tmp_path / "tree", 1500)
    writers: list[str] = []
    real = SiteDestination.tar_writer

    def counting(self: SiteDestination, part: str) -> transfer.Writer:
        writers.append(part)
        return real(self, part)

    monkeypatch.setattr(SiteDestination, "tar_writer", counting)
    seen: list[Progress] = []
    result = copy_tree(LocalTree(tmp_path / "tree"), SiteDestination(session, work_dir), "dataset",
                       progress=seen.append)
    assert len(writers) == 1  # one remote tar -x for all 1500 files
    assert result.files == 1500 and result.size == 1500 * 4096
    assert result.sha256 == transfer.tree_digest(expected)
    assert transfer.remote_manifest(session, f"{work_dir}/dataset") == expected
    assert seen[-1].files_done == 1500 and seen[-1].phase == "done"
    assert ".dataset.hpcwaas-part" not in _listing(session, work_dir)


class _Dropping(LocalFile):
    """A local file whose stream breaks after ``limit`` bytes, like a dropped connection."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(path)
        self.limit = limit

    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        with super().open(offset) as (honoured, chunks):

            def broken() -> Iterator[bytes]:
                sent = 0
                for chunk in chunks:
                    yield chunk
                    sent += len(chunk)
                    if sent >= self.limit:
                        raise ConnectionResetError("connection dropped")

            yield honoured, broken()


def test_interrupted_transfer_resumes_from_the_partial_file(tmp_path: Path, session: SSHSession,
                                                            work_dir: str) -> None:
    digest = make_file(tmp_path / "f.bin", 24 * MiB, seed=2)
    dest = SiteDestination(session, work_dir)
    with pytest.raises(ConnectionResetError):
        copy_file(_Dropping(tmp_path / "f.bin", 10 * MiB), dest, "f.bin")
    assert _listing(session, work_dir) == [".f.bin.hpcwaas-part"]  # nothing at the final name
    result = copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")
    assert result.resumed_from >= 10 * MiB and result.sha256 == digest
    assert _remote_sha(session, f"{work_dir}/f.bin") == digest
    assert _listing(session, work_dir) == ["f.bin"]


def test_corrupted_partial_file_is_detected_and_removed(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    make_file(tmp_path / "f.bin", 8 * MiB, seed=3)
    dest = SiteDestination(session, work_dir)
    with pytest.raises(ConnectionResetError):
        copy_file(_Dropping(tmp_path / "f.bin", 4 * MiB), dest, "f.bin")
    # Someone (a disk, a bug) flips bytes in what has already landed.
    session.run(["sh", "-c", 'printf XXXX | dd of="$1" bs=1 seek=1000 conv=notrunc 2>/dev/null', "sh",
                 f"{work_dir}/.f.bin.hpcwaas-part"], check=True)
    with pytest.raises(ChecksumMismatch, match="corrupted transfer"):
        copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")
    assert _listing(session, work_dir) == []  # neither the bad data nor a final file


def test_corruption_in_flight_is_detected(tmp_path: Path, session: SSHSession, work_dir: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    make_file(tmp_path / "f.bin", 3 * MiB, seed=4)
    real_write = transfer._RemoteWriter.write
    calls = {"n": 0}

    def flipping(self: transfer._RemoteWriter, data: bytes) -> None:
        calls["n"] += 1
        real_write(self, bytes([data[0] ^ 0xFF]) + data[1:] if calls["n"] == 2 else data)

    monkeypatch.setattr(transfer._RemoteWriter, "write", flipping)
    with pytest.raises(ChecksumMismatch):
        copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), "f.bin")
    assert _listing(session, work_dir) == []


def test_declared_checksum_that_does_not_match_fails(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    make_file(tmp_path / "f.bin", 1 * MiB)
    with pytest.raises(ChecksumMismatch, match="declared sha256"):
        copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), "f.bin",
                  expected_sha256="0" * 64)
    assert _listing(session, work_dir) == []


@pytest.mark.parametrize("path", ["../escape.bin", "/etc/passwd-copy", "a/../../escape.bin", "/home/sciuser2/x"])
def test_paths_outside_the_work_dir_are_refused(tmp_path: Path, session: SSHSession, work_dir: str,
                                                path: str) -> None:
    make_file(tmp_path / "f.bin", 1024)
    with pytest.raises(PathOutsideWorkDir):
        copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), path)


def test_a_symlink_cannot_lead_out_of_the_work_dir(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    session.run(["sh", "-c", 'mkdir -p "$1" && ln -s /tmp "$1/out"', "sh", work_dir], check=True)
    make_file(tmp_path / "f.bin", 1024)
    with pytest.raises(PathOutsideWorkDir, match="outside the work directory"):
        copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), "out/f.bin")


def test_shell_metacharacters_in_names_are_just_names(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    make_file(tmp_path / "f.bin", 1024)
    name = "a b;$(touch pwned)`id`'\".bin"
    result = copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), name)
    assert result.path.endswith(name)
    assert _listing(session, work_dir) == [name]
    assert session.run(["test", "-e", f"{work_dir}/pwned"]).exit_code != 0


def test_existing_destination_needs_overwrite(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    make_file(tmp_path / "f.bin", 1024, seed=1)
    dest = SiteDestination(session, work_dir)
    copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")
    digest = make_file(tmp_path / "f.bin", 2048, seed=9)
    with pytest.raises(DestinationExists):
        copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")
    assert copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin", overwrite=True).sha256 == digest
    assert _remote_sha(session, f"{work_dir}/f.bin") == digest


def test_partial_tree_sends_only_missing_files_and_replaces_bad_ones(tmp_path: Path, session: SSHSession,
                                                                     work_dir: str) -> None:
    expected = make_tree(tmp_path / "tree", 300, size=1024)
    dest = SiteDestination(session, work_dir)
    part = f"{work_dir}/.ds.hpcwaas-part"
    # An earlier run left 100 good files, one damaged file and a stray one.
    small = tmp_path / "partial"
    for rel in sorted(expected)[:100]:
        (small / rel).parent.mkdir(parents=True, exist_ok=True)
        (small / rel).write_bytes((tmp_path / "tree" / rel).read_bytes())
    copy_tree(LocalTree(small), dest, ".ds.hpcwaas-part")
    first = sorted(expected)[0]
    session.run(["sh", "-c", 'printf junk > "$1/$2"; printf x > "$1/stray.txt"', "sh", part, first], check=True)
    result = copy_tree(LocalTree(tmp_path / "tree"), dest, "ds")
    assert result.resumed_from == 99 and result.files == 300
    assert transfer.remote_manifest(session, f"{work_dir}/ds") == expected


def test_site_to_site_file_and_tree_stream_through_the_worker(tmp_path: Path, session: SSHSession,
                                                              session2: SSHSession, work_dir: str,
                                                              work_dir2: str) -> None:
    digest = make_file(tmp_path / "f.bin", 6 * MiB, seed=5)
    tree = make_tree(tmp_path / "tree", 50)
    here = SiteDestination(session, work_dir)
    copy_file(LocalFile(tmp_path / "f.bin"), here, "f.bin")
    copy_tree(LocalTree(tmp_path / "tree"), here, "tree")
    there = SiteDestination(session2, work_dir2)
    result = transfer.copy(transfer.site_source(session, work_dir, "f.bin"), there, "copy.bin")
    assert result.sha256 == digest and _remote_sha(session2, f"{work_dir2}/copy.bin") == digest
    result = transfer.copy(transfer.site_source(session, work_dir, "tree"), there, "tree")
    assert result.files == 50 and transfer.remote_manifest(session2, f"{work_dir2}/tree") == tree


def test_stage_out_to_local_storage(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    digest = make_file(tmp_path / "f.bin", 2 * MiB, seed=6)
    copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir), "out/result.bin")
    storage = tmp_path / "storage"
    storage.mkdir()
    result = transfer.copy(transfer.site_source(session, work_dir, "out/result.bin"), LocalDestination(storage),
                           "results/r.bin")
    assert result.sha256 == digest and hashlib.sha256((storage / "results/r.bin").read_bytes()).hexdigest() == digest
    tree = make_tree(tmp_path / "tree", 20)
    copy_tree(LocalTree(tmp_path / "tree"), SiteDestination(session, work_dir), "out/tree")
    transfer.copy(transfer.site_source(session, work_dir, "out"), LocalDestination(storage), "results/all")
    assert transfer.local_manifest(storage / "results/all/tree") == tree
    with pytest.raises(PathOutsideWorkDir):
        transfer.copy(transfer.site_source(session, work_dir, "out/result.bin"), LocalDestination(storage), "../x")


def test_http_download_resumes_with_range(tmp_path: Path, session: SSHSession, work_dir: str,
                                          http_root: tuple[Path, str]) -> None:
    root, base = http_root
    digest = make_file(root / "image.sif", 12 * MiB, seed=7)
    dest = SiteDestination(session, work_dir)

    class DroppingHttp(HttpFile):
        @contextlib.contextmanager
        def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
            with super().open(offset) as (honoured, chunks):
                def broken() -> Iterator[bytes]:
                    for i, chunk in enumerate(chunks):
                        yield chunk
                        if i == 3:
                            raise ConnectionResetError("dropped")
                yield honoured, broken()

    with pytest.raises(ConnectionResetError):
        copy_file(DroppingHttp(f"{base}/image.sif", declared_sha256=digest), dest, "images/app.sif")
    result = copy_file(HttpFile(f"{base}/image.sif", declared_sha256=digest), dest, "images/app.sif")
    assert result.resumed_from > 0 and result.sha256 == digest
    with pytest.raises(SourceUnavailable, match="404"):
        copy_file(HttpFile(f"{base}/missing.sif"), dest, "images/none.sif")


# The bulk path through the OpenSSH client (what the pipelines use when OpenSSH is installed).


@pytest.fixture
def link(site, site_key) -> Iterator[OpenSSHLink]:  # type: ignore[no-untyped-def]
    from hpcwaas.ssh import SiteEndpoint

    with OpenSSHLink(SiteEndpoint(site.host, site.port, site.host_key), "sciuser1", site_key.pair.private_key) as lk:
        yield lk


def test_openssh_link_streams_files_and_trees_with_the_same_guarantees(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink) -> None:
    digest = make_file(tmp_path / "big.bin", 32 * MiB, seed=21)
    expected = make_tree(tmp_path / "tree", 500)
    dest = SiteDestination(session, work_dir, link)
    assert copy_file(LocalFile(tmp_path / "big.bin"), dest, "big.bin").sha256 == digest
    assert _remote_sha(session, f"{work_dir}/big.bin") == digest
    assert copy_tree(LocalTree(tmp_path / "tree"), dest, "tree").files == 500
    assert transfer.remote_manifest(session, f"{work_dir}/tree") == expected
    # Reading back through the link (stage-out, site-to-site).
    storage = tmp_path / "storage"
    storage.mkdir()
    out = transfer.copy(transfer.site_source(session, work_dir, "big.bin", link=link), LocalDestination(storage), "b")
    assert out.sha256 == digest
    out = transfer.copy(transfer.site_source(session, work_dir, "tree", link=link), LocalDestination(storage), "t")
    assert transfer.local_manifest(storage / "t") == expected
    # Interrupted, then resumed, through the link.
    with pytest.raises(ConnectionResetError):
        copy_file(_Dropping(tmp_path / "big.bin", 8 * MiB), dest, "again.bin")
    again = copy_file(LocalFile(tmp_path / "big.bin"), dest, "again.bin")
    assert again.resumed_from >= 8 * MiB and again.sha256 == digest


def test_openssh_link_refuses_a_wrong_host_key(site, site_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hpcwaas.errors import RemoteCommandFailed
    from hpcwaas.ssh import SiteEndpoint, generate_keypair

    other = generate_keypair().public.line
    with OpenSSHLink(SiteEndpoint(site.host, site.port, other), "sciuser1", site_key.pair.private_key) as lk:
        writer = transfer._LocalProcessWriter(None, "writing", lk.popen(["cat"]))
        with pytest.raises(RemoteCommandFailed):
            writer.finish()
    assert not list(Path(lk._dir).parent.glob(lk._dir.name))  # agent directory removed


def test_openssh_link_reads_a_local_file_itself_with_progress(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain local file is ssh's own stdin: no chunk goes through Python, progress still moves."""
    digest = make_file(tmp_path / "f.bin", 40 * MiB, seed=31)

    def no_chunks(self: LocalFile, offset: int) -> None:
        raise AssertionError("the direct path must not read the file through Python")

    monkeypatch.setattr(LocalFile, "open", no_chunks)
    seen: list[Progress] = []
    result = copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir, link), "f.bin",
                       progress=seen.append)
    assert result.sha256 == digest and result.size == 40 * MiB and result.first_byte_at is not None
    assert _remote_sha(session, f"{work_dir}/f.bin") == digest
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == 40 * MiB and seen[-1].phase == "done"


def test_openssh_link_detects_a_corrupted_partial_file_on_resume(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink) -> None:
    make_file(tmp_path / "f.bin", 8 * MiB, seed=32)
    dest = SiteDestination(session, work_dir, link)
    with pytest.raises(ConnectionResetError):
        copy_file(_Dropping(tmp_path / "f.bin", 4 * MiB), dest, "f.bin")
    session.run(["sh", "-c", 'printf XXXX | dd of="$1" bs=1 seek=1000 conv=notrunc 2>/dev/null', "sh",
                 f"{work_dir}/.f.bin.hpcwaas-part"], check=True)
    with pytest.raises(ChecksumMismatch, match="corrupted transfer"):
        copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")  # the direct path, resumed
    assert _listing(session, work_dir) == []


def test_a_declared_checksum_spares_the_worker_hash_and_is_checked_at_the_destination(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    digest = make_file(tmp_path / "f.bin", 6 * MiB, seed=33)

    def no_hash(*args: object) -> None:
        raise AssertionError("the worker hashed the source although a checksum was declared")

    monkeypatch.setattr(transfer, "sha256_file", no_hash)
    monkeypatch.setattr(transfer._BackgroundHash, "update", no_hash)
    for dest, name in ((SiteDestination(session, work_dir, link), "via-openssh.bin"),
                       (SiteDestination(session, work_dir), "via-paramiko.bin")):
        result = copy_file(LocalFile(tmp_path / "f.bin", declared_sha256=digest), dest, name)
        assert result.sha256 == digest and _remote_sha(session, result.path) == digest
    monkeypatch.undo()
    # A wrong declaration fails, and says the source is what differs from it.
    with pytest.raises(ChecksumMismatch, match="does not match the declared sha256"):
        copy_file(LocalFile(tmp_path / "f.bin", declared_sha256="1" * 64),
                  SiteDestination(session, work_dir, link), "wrong.bin")
    assert "wrong.bin" not in " ".join(_listing(session, work_dir))


def test_bulk_ssh_ciphers_can_be_chosen_but_not_injected(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from data_logistics import openssh
    from data_logistics.errors import StagingError

    assert link.argv(["true"])[link.argv(["true"]).index("-c") + 1] == openssh.DEFAULT_CIPHERS
    digest = make_file(tmp_path / "f.bin", 1 * MiB, seed=34)
    monkeypatch.setenv("HPCWAAS_PIPELINES_SSH_CIPHERS", "chacha20-poly1305@openssh.com")
    assert copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir, link), "c.bin").sha256 == digest
    for bad in ("aes128-ctr -oProxyCommand=x", "-oProxyCommand=x", "aes128-ctr,,", "aes;id"):
        monkeypatch.setenv("HPCWAAS_PIPELINES_SSH_CIPHERS", bad)
        with pytest.raises(StagingError):
            link.argv(["true"])


def test_openssh_link_sends_a_local_tree_as_tar_piped_into_ssh(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Local tar -c | ssh tar -x: odd names arrive as they are, set-id and group/other write bits do not."""
    root = tmp_path / "tree"
    expected = make_tree(root, 300)
    odd = ["-starts-with-dash", "back\\slash", "a b;$(touch pwned)`id`'\".bin", "é/ü.txt", "--null"]
    for i, rel in enumerate(odd):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(f"odd {i}".encode())
        expected[rel] = hashlib.sha256(f"odd {i}".encode()).hexdigest()
    (root / "-starts-with-dash").chmod(0o6777)
    (root / "link").symlink_to("/etc/passwd")

    def no_python_tar(*args: object) -> None:
        raise AssertionError("the tree must go through the local tar, not tarfile")

    monkeypatch.setattr(LocalTree, "send_tar", no_python_tar)
    seen: list[Progress] = []
    result = copy_tree(LocalTree(root), SiteDestination(session, work_dir, link), "t", progress=seen.append)
    assert result.files == len(expected) and result.skipped == ["link"]
    assert result.sha256 == transfer.tree_digest(expected)
    assert transfer.remote_manifest(session, f"{work_dir}/t") == expected
    assert session.run(["test", "-e", f"{work_dir}/pwned"]).exit_code != 0
    mode = session.run(["stat", "-c", "%a", "--", f"{work_dir}/t/-starts-with-dash"], check=True).stdout.strip()
    assert int(mode, 8) & 0o7022 == 0
    done = [(p.bytes_done, p.files_done) for p in seen]
    assert done == sorted(done) and seen[-1].files_done == len(expected) and seen[-1].phase == "done"


def test_openssh_link_tree_fails_when_a_file_vanishes_and_resumes_after(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tree"
    expected = make_tree(root, 200)
    real_files = LocalTree.files

    def with_a_ghost(self: LocalTree) -> list[transfer.TreeFile]:
        return [*real_files(self), transfer.TreeFile("zz/gone.dat", 10)]  # listed, then deleted

    monkeypatch.setattr(LocalTree, "files", with_a_ghost)
    dest = SiteDestination(session, work_dir, link)
    # The worker cannot hash it: the transfer stops.
    with pytest.raises(SourceUnavailable, match=r"zz/gone\.dat"):
        copy_tree(LocalTree(root), dest, "t")
    assert _listing(session, work_dir) in ([], [".t.hpcwaas-part"])  # nothing at the final name
    # tar cannot read it (the worker's hash came from elsewhere): tar's failure fails the transfer.
    real_hash = transfer.sha256_file
    monkeypatch.setattr(transfer, "sha256_file", lambda p: "0" * 64 if p.name == "gone.dat" else real_hash(p))
    with pytest.raises(StagingError, match="tar -c failed"):
        copy_tree(LocalTree(root), dest, "t")
    assert _listing(session, work_dir) == [".t.hpcwaas-part"]
    monkeypatch.undo()
    result = copy_tree(LocalTree(root), dest, "t")
    assert result.resumed_from == 200 and result.files == 200  # everything else had landed intact
    assert transfer.remote_manifest(session, f"{work_dir}/t") == expected


def test_openssh_link_writes_a_site_file_straight_into_local_storage(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage-out of a file: ssh's stdout is the local partial file; progress, resume and checks hold."""
    digest = make_file(tmp_path / "f.bin", 24 * MiB, seed=41)
    assert copy_file(LocalFile(tmp_path / "f.bin"), SiteDestination(session, work_dir, link), "f.bin").sha256 == digest
    storage = tmp_path / "storage"
    storage.mkdir()

    def no_chunks(self: transfer.SiteFile, offset: int) -> None:
        raise AssertionError("the direct path must not read the file through Python")

    monkeypatch.setattr(transfer.SiteFile, "open", no_chunks)
    seen: list[Progress] = []
    source = transfer.site_source(session, work_dir, "f.bin", link=link)
    result = copy_file(source, LocalDestination(storage), "out/f.bin", progress=seen.append)
    assert result.sha256 == digest and transfer.sha256_file(storage / "out" / "f.bin") == digest
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == 24 * MiB and result.first_byte_at is not None
    # A partial local copy is completed from its size, and verified against the source at rest.
    (storage / "out" / ".g.bin.hpcwaas-part").write_bytes((tmp_path / "f.bin").read_bytes()[: 5 * MiB])
    again = copy_file(source, LocalDestination(storage), "out/g.bin")
    assert again.resumed_from == 5 * MiB and again.sha256 == digest
    # A corrupted partial copy is detected and removed.
    (storage / "out" / ".h.bin.hpcwaas-part").write_bytes(b"X" * MiB)
    with pytest.raises(ChecksumMismatch, match="corrupted transfer"):
        copy_file(source, LocalDestination(storage), "out/h.bin")
    assert sorted(p.name for p in (storage / "out").iterdir()) == ["f.bin", "g.bin"]


def test_direct_paths_refuse_a_wrong_host_key(site, site_key, tmp_path: Path, session: SSHSession,  # type: ignore[no-untyped-def]
                                              work_dir: str) -> None:
    from hpcwaas.errors import RemoteCommandFailed
    from hpcwaas.ssh import SiteEndpoint, generate_keypair

    make_file(tmp_path / "f.bin", 2 * MiB, seed=51)
    make_tree(tmp_path / "tree", 20)
    other = generate_keypair().public.line
    with OpenSSHLink(SiteEndpoint(site.host, site.port, other), "sciuser1", site_key.pair.private_key) as lk:
        dest = SiteDestination(session, work_dir, lk)
        with pytest.raises(RemoteCommandFailed, match="host"):
            copy_file(LocalFile(tmp_path / "f.bin"), dest, "f.bin")
        with pytest.raises(RemoteCommandFailed, match="host"):
            copy_tree(LocalTree(tmp_path / "tree"), dest, "tree")
    assert not {"f.bin", "tree"} & set(_listing(session, work_dir))  # nothing landed under a final name


def test_openssh_link_pipes_a_site_tree_into_a_local_tar(
        tmp_path: Path, session: SSHSession, work_dir: str, link: OpenSSHLink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage-out of a directory: ssh site tar -c | local tar -x; progress, resume and checks hold."""
    expected = make_tree(tmp_path / "tree", 400)
    assert copy_tree(LocalTree(tmp_path / "tree"), SiteDestination(session, work_dir, link), "tree").files == 400
    storage = tmp_path / "storage"
    storage.mkdir()

    def no_relay(*args: object) -> None:
        raise AssertionError("the tree must go from ssh to the local tar directly")

    monkeypatch.setattr(transfer.SiteTree, "send_tar", no_relay)
    source = transfer.site_source(session, work_dir, "tree", link=link)
    seen: list[Progress] = []
    result = transfer.copy(source, LocalDestination(storage), "t", progress=seen.append)
    assert result.files == 400 and result.sha256 == transfer.tree_digest(expected)
    assert transfer.local_manifest(storage / "t") == expected
    done = [(p.bytes_done, p.files_done) for p in seen]
    assert done == sorted(done) and seen[-1].files_done == 400 and seen[-1].phase == "done"
    # A partial local copy: intact files are kept, a corrupted one is detected, removed, and sent again.
    partial = storage / ".u.hpcwaas-part"
    for rel in list(expected)[:150]:
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        (partial / rel).write_bytes((tmp_path / "tree" / rel).read_bytes())
    bad = next(iter(expected))
    (partial / bad).write_bytes(b"corrupted")
    again = transfer.copy(source, LocalDestination(storage), "u")
    assert again.resumed_from == 149 and transfer.local_manifest(storage / "u") == expected


def test_an_absolute_source_is_read_where_it_is_a_relative_one_inside_the_work_dir(
        tmp_path: Path, session: SSHSession, work_dir: str, work_dir2: str, session2: SSHSession) -> None:
    """One meaning for an sftp source: a catalogue dataset's absolute path is read with the login's
    own rights wherever it is (seen: invoke accepted one outside the work dir, stage-in failed); a
    relative path stays inside the work directory; a file the login may not read is refused."""
    from data_logistics.errors import SourceUnavailable
    from data_logistics.transfer import site_source

    shared = f"/home/sciuser1/dl-shared-{uuid.uuid4().hex[:8]}"
    session.run(["sh", "-c", 'mkdir -p "$1" && echo data > "$1/in.txt" && chmod 700 "$1"', "sh", shared], check=True)
    try:
        source = site_source(session, work_dir, f"{shared}/in.txt")
        result = copy_file(source, LocalDestination(tmp_path), "in.txt")
        assert (tmp_path / "in.txt").read_text() == "data\n" and result.size == 5
        with pytest.raises(PathOutsideWorkDir):
            site_source(session, work_dir, "../../dl-shared/in.txt")
        with pytest.raises(SourceUnavailable, match="cannot be read"):  # sciuser2 may not look in there
            site_source(session2, work_dir2, f"{shared}/in.txt")
    finally:
        session.run(["rm", "-rf", "--", shared])


def test_the_same_bytes_again_are_not_copied(tmp_path: Path, session: SSHSession, work_dir: str) -> None:
    """Redeploying an unchanged image copied it again: with its checksum known and the very same
    bytes at the destination, a replacing copy does nothing (the site's file is hashed at rest)."""
    digest = make_file(tmp_path / "image.sif", 2 * MiB)
    first = copy_file(LocalFile(tmp_path / "image.sif"), SiteDestination(session, work_dir), "images/image.sif",
                      overwrite=True, expected_sha256=digest)
    assert first.skipped == [] and first.sha256 == digest
    stamp = session.run(["stat", "-c", "%Y %i", first.path], check=True).stdout
    again = copy_file(LocalFile(tmp_path / "image.sif"), SiteDestination(session, work_dir), "images/image.sif",
                      overwrite=True, expected_sha256=digest)
    assert again.skipped == [first.path] and again.sha256 == digest and again.size == 2 * MiB
    assert session.run(["stat", "-c", "%Y %i", first.path], check=True).stdout == stamp  # untouched
    make_file(tmp_path / "image.sif", 2 * MiB, seed=2)  # changed: copied
    changed = copy_file(LocalFile(tmp_path / "image.sif"), SiteDestination(session, work_dir), "images/image.sif",
                        overwrite=True)
    assert changed.skipped == [] and changed.sha256 != digest
