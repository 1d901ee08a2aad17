"""The transfer engine: streamed, resumable, atomic, sha256-verified copies, without Airflow.

A transfer reads a :class:`FileSource` (an HTTP URL, a local file, a file on a site) or a
:class:`TreeSource` (a local directory, a directory on a site) and writes it to a
:class:`Destination` (a site user's work directory, or a local storage root):

* **streamed**: bytes go from the source to the destination in 1 MiB chunks, or straight between
  processes where one can do it (a local file as ``ssh``'s stdin, local ``tar -c`` piped into
  ``ssh``, ``ssh`` writing a local file); the worker never holds a copy on its disk. A directory
  travels as one tar stream (``tar -x`` on the far side).
* **atomic**: data lands in a hidden ``.<name>.hpcwaas-part`` next to the destination and is
  renamed into place only after verification.
* **resumable**: a later transfer to the same destination continues a partial file from its
  size (HTTP ``Range``, ``tail -c +N`` on a site, ``seek`` locally) and sends only the files of a
  partial directory that are missing or differ.
* **verified end to end**: the destination is hashed at rest (``openssl dgst`` or ``sha256sum``
  on the site) and compared with a declared checksum (catalogue, image digest) when there is one
  (the worker then does not hash the source), otherwise with the hash of what the source holds
  (computed while streaming, by a concurrent read of the same file, or at rest at the source).
  A mismatch removes the bad data and raises :class:`ChecksumMismatch`.
* **confined**: destination paths are resolved on the site (symlinks included) and must stay
  inside the work directory; local paths must stay inside their storage root.

Progress (bytes and files done, with totals when known) is reported through a callback,
throttled to a few calls per second.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import queue
import shutil
import subprocess
import tarfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httpx

from data_logistics import openssh, remote
from data_logistics.errors import (
    ChecksumMismatch,
    DestinationExists,
    InvalidTransfer,
    PathOutsideWorkDir,
    SourceUnavailable,
    StagingError,
)
from data_logistics.openssh import OpenSSHLink
from hpcwaas.errors import RemoteCommandFailed, SSHError
from hpcwaas.ssh import SSHSession

CHUNK = remote.CHUNK
PART_PREFIX, PART_SUFFIX = ".", ".hpcwaas-part"
_HEX = set("0123456789abcdef")


def check_sha256(value: str | None, field: str = "sha256") -> str | None:
    """A lower-case hex sha256, or None; anything else is refused."""
    if value is None:
        return None
    value = value.strip().lower().removeprefix("sha256:")
    if len(value) != 64 or not set(value) <= _HEX:
        raise InvalidTransfer(f"{field} must be 64 hexadecimal characters (a sha256)", field=field)
    return value


# ------------------------------------------------------------------------------------------
# Progress


@dataclass
class Progress:
    """How far a transfer is; what the DAGs push to XCom and the gateway shows."""

    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    phase: str = "starting"  # starting | transferring | verifying | done
    first_byte_at: float | None = None  # time.time() of the first byte written

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[Progress], None]


class _Reporter:
    """Calls the progress callback at most every ``interval`` seconds (and on phase changes)."""

    def __init__(self, callback: ProgressFn | None, interval: float = 0.5) -> None:
        self.state = Progress()
        self._callback = callback
        self._interval = interval
        self._last = 0.0

    def phase(self, name: str) -> None:
        self.state.phase = name
        self.emit(force=True)

    def add(self, nbytes: int = 0, nfiles: int = 0) -> None:
        if nbytes and self.state.first_byte_at is None:
            self.state.first_byte_at = time.time()
        self.state.bytes_done += nbytes
        self.state.files_done += nfiles
        self.emit()

    def emit(self, force: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._callback(Progress(**asdict(self.state)))


# ------------------------------------------------------------------------------------------
# File sources


class FileSource(ABC):
    """One file to copy. ``open(offset)`` yields the chunks from ``offset`` on."""

    label: str
    declared_sha256: str | None = None

    @abstractmethod
    def size(self) -> int | None:
        """The size in bytes, if the source knows it."""

    @abstractmethod
    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        """(the offset actually honoured, chunks); a source that cannot seek answers 0."""

    def sha256_at_rest(self) -> str | None:
        """The source's hash computed independently of the stream (None if unavailable)."""
        return None


class LocalFile(FileSource):
    """A file on the worker (inside a storage root, checked by the caller)."""

    def __init__(self, path: Path, declared_sha256: str | None = None) -> None:
        self.path = path
        self.label = str(path)
        self.declared_sha256 = check_sha256(declared_sha256)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as exc:
            raise SourceUnavailable(f"cannot read {self.path}: {exc.strerror}", path=str(self.path)) from exc

    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        with self.path.open("rb") as fh:
            fh.seek(offset)
            yield offset, iter(lambda: fh.read(CHUNK), b"")

    def sha256_at_rest(self) -> str:
        return sha256_file(self.path)


class HttpFile(FileSource):
    """A file behind an http(s) URL, read with ``Range`` to resume; TLS is always verified."""

    def __init__(self, url: str, declared_sha256: str | None = None, timeout: float = 30.0,
                 guard: Callable[[str], None] | None = None) -> None:
        if not url.startswith(("https://", "http://")):
            raise InvalidTransfer("only http and https URLs can be downloaded", field="url")
        self.url = url
        self.label = url
        self.declared_sha256 = check_sha256(declared_sha256)
        hooks = {"request": [lambda request: guard(str(request.url))]} if guard else {}
        # ``guard`` sees every request, redirects included, before it is sent.
        self._client = httpx.Client(timeout=timeout, follow_redirects=True, verify=True, event_hooks=hooks)
        self._size: int | None = None

    def size(self) -> int | None:
        if self._size is None:
            try:
                resp = self._client.head(self.url)
            except httpx.HTTPError as exc:
                raise SourceUnavailable(f"cannot reach {self.url}: {exc}", url=self.url) from exc
            if resp.status_code >= 400:
                raise SourceUnavailable(f"{self.url} answered HTTP {resp.status_code}", url=self.url)
            length = resp.headers.get("content-length")
            self._size = int(length) if length and length.isdigit() else None
        return self._size

    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._client.stream("GET", self.url, headers=headers) as resp:
                if resp.status_code >= 400:
                    raise SourceUnavailable(f"{self.url} answered HTTP {resp.status_code}", url=self.url)
                honoured = offset if resp.status_code == 206 else 0
                yield honoured, resp.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"download of {self.url} failed: {exc}", url=self.url) from exc

    def close(self) -> None:
        self._client.close()


class SiteFile(FileSource):
    """A file on a site, streamed with ``tail -c +N`` over the source session."""

    def __init__(self, session: SSHSession, path: str, declared_sha256: str | None = None,
                 link: OpenSSHLink | None = None) -> None:
        self.session = session
        self.link = link
        self.path = path
        self.label = f"{session.endpoint.label}:{path}"
        self.declared_sha256 = check_sha256(declared_sha256)

    def size(self) -> int:
        out = remote.run_checked(self.session, ["stat", "-L", "-c", "%s", "--", self.path], "stat of the source")
        return int(out.strip())

    @contextlib.contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        argv = ["tail", "-c", f"+{offset + 1}", "--", self.path]
        if self.link is not None:
            with _local_reader(self.link, argv, b"", "reading the source file") as chunks:
                yield offset, chunks
            return
        with remote.popen(self.session, argv) as proc:
            proc.close_stdin()
            yield offset, proc.chunks()
            proc.check("reading the source file")

    def sha256_at_rest(self) -> str:
        return remote_sha256(self.session, self.path)


@contextlib.contextmanager
def _local_reader(link: OpenSSHLink, argv: list[str], stdin: bytes, what: str) -> Iterator[Iterator[bytes]]:
    """Chunks of a site command's stdout through the OpenSSH client."""
    proc = link.popen(argv)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
        out = proc.stdout
        yield iter(lambda: out.read(CHUNK), b"")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.stdout.read()
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RemoteCommandFailed(f"{what} failed on the site (exit {proc.returncode}): "
                                  f"{err.decode(errors='replace').strip()[-1000:]}", exit_code=proc.returncode)


class _BackgroundHash:
    """sha256 in a thread: hashlib releases the GIL, so hashing overlaps with the pipe writes."""

    _END = b""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is self._END:
                return
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        if chunk:
            self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(self._END)
        self._thread.join()
        return self._digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# openssl uses the CPU's SHA extensions; coreutils' sha256sum (Debian 12) is ~5x slower.
_SHA256 = 'if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r < "$1"; else sha256sum < "$1"; fi'


def remote_sha256(session: SSHSession, path: str) -> str:
    out = remote.run_checked(session, remote.sh(_SHA256, path), "hashing the file", timeout=3600)
    digest = out.split()[0].lstrip("\\") if out.split() else ""
    if len(digest) != 64:
        raise RemoteCommandFailed(f"unexpected hash output on the site: {out[:200]!r}")
    return digest


# ------------------------------------------------------------------------------------------
# Tree sources


@dataclass(frozen=True)
class TreeFile:
    rel: str  # POSIX path relative to the tree's root
    size: int


class TreeSource(ABC):
    """A directory to copy as one tar stream."""

    label: str

    @abstractmethod
    def files(self) -> list[TreeFile]:
        """The regular files of the tree (symbolic links and special files are not copied)."""

    @abstractmethod
    def manifest(self) -> dict[str, str]:
        """rel -> sha256 of every file, computed at rest at the source."""

    @property
    def hashes_while_streaming(self) -> bool:
        """True if :meth:`send_tar` reports each file's hash (no separate pass needed)."""
        return False

    @abstractmethod
    def send_tar(self, files: list[TreeFile], sink: Callable[[bytes], None],
                 on_file: Callable[[TreeFile, str | None], None]) -> None:
        """Write a tar stream of ``files`` to ``sink``; call ``on_file`` after each one."""


class _SinkWriter:
    """A write-only file object that hands the writes to a sink in CHUNK-sized blocks.

    tarfile's own stream buffer concatenates ``bytes`` (quadratic with a large buffer), so it is
    given a small one and the batching happens here, in a bytearray."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._buf = bytearray()

    def write(self, data: Any) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._sink(bytes(self._buf))
            self._buf.clear()


class _HashingReader:
    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.digest.update(data)
        return data


class LocalTree(TreeSource):
    """A directory on the worker (inside a storage root, checked by the caller)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)
        self.skipped: list[str] = []

    def files(self) -> list[TreeFile]:
        """Depth-first, sorted by name (a directory's files before its subdirectories, like os.walk);
        one ``lstat`` per file (``scandir`` gives the type)."""
        found: list[TreeFile] = []
        pending: list[tuple[str, str]] = [(str(self.root), "")]
        while pending:
            dirpath, prefix = pending.pop()
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
            subdirs = []
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    found.append(TreeFile(rel, entry.stat(follow_symlinks=False).st_size))
                else:  # symbolic links (to files or directories), sockets, devices...
                    self.skipped.append(rel)
            pending.extend(reversed(subdirs))
        return found

    def tar_argv(self) -> list[str]:
        """GNU tar writing the files named (NUL-separated) on its stdin, as they are, to stdout; the
        verbose listing (one line per file, on stderr since the archive is on stdout) is the progress.
        Same metadata as the tarfile path: mode without set-id/sticky/group-other write, owner 0."""
        return ["tar", "-c", "-f", "-", "-C", str(self.root), "--format=gnu", "--no-recursion", "--owner=0",
                "--group=0", "--numeric-owner", "--mode=go-w,a-st", "--null", "--verbatim-files-from",
                "--no-unquote", "-v", "-T", "-"]

    def manifest(self) -> dict[str, str]:
        return {f.rel: sha256_file(self.root / f.rel) for f in self.files()}

    @property
    def hashes_while_streaming(self) -> bool:
        return True

    def send_tar(self, files: list[TreeFile], sink: Callable[[bytes], None],
                 on_file: Callable[[TreeFile, str | None], None]) -> None:
        writer = _SinkWriter(sink)
        with tarfile.open(fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=tarfile.RECORDSIZE) as tar:
            for item in files:
                path = self.root / item.rel
                st = path.lstat()
                info = tarfile.TarInfo(item.rel)
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), st.st_mode & 0o755
                with path.open("rb") as fh:
                    reader = _HashingReader(fh)
                    tar.addfile(info, reader)
                on_file(item, reader.digest.hexdigest())
        writer.flush()  # the end-of-archive blocks, written when the tarfile closed


class SiteTree(TreeSource):
    """A directory on a site: listed with ``find``, hashed with ``sha256sum``, sent with ``tar -c``."""

    def __init__(self, session: SSHSession, root: str, link: OpenSSHLink | None = None) -> None:
        self.session = session
        self.link = link
        self.root = root
        self.label = f"{session.endpoint.label}:{root}"

    def files(self) -> list[TreeFile]:
        out = remote.run_checked(
            self.session, remote.sh('cd -- "$1" && find . -type f -printf "%s %P\\0"', self.root), "listing the source"
        )
        found = []
        for record in out.split("\0"):
            if record:
                size, rel = record.split(" ", 1)
                found.append(TreeFile(rel, int(size)))
        return sorted(found, key=lambda f: f.rel)

    def manifest(self) -> dict[str, str]:
        return remote_manifest(self.session, self.root)

    def send_tar(self, files: list[TreeFile], sink: Callable[[bytes], None],
                 on_file: Callable[[TreeFile, str | None], None]) -> None:
        sizes = {f.rel: f for f in files}
        argv = ["tar", "-c", "-f", "-", "-C", self.root, "--null", "-T", "-"]
        names = b"".join(f.rel.encode() + b"\0" for f in files)
        if self.link is not None:
            with _local_reader(self.link, argv, names, "tar on the source site") as chunks:
                for chunk in chunks:
                    sink(chunk)
        else:
            with remote.popen(self.session, argv) as proc:
                proc.write(names)
                proc.close_stdin()
                for chunk in proc.chunks():
                    sink(chunk)
                proc.check("tar on the source site")
        for item in sizes.values():
            on_file(item, None)


def _parse_sha256sum(out: str) -> dict[str, str]:
    """Parse ``sha256sum`` lines (GNU escapes names holding a backslash or newline)."""
    result: dict[str, str] = {}
    for line in out.split("\n"):
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, name = line[:64], line[66:]
        if escaped:
            name = name.replace("\\n", "\n").replace("\\\\", "\\")
        result[name.removeprefix("./")] = digest
    return result


def remote_manifest(session: SSHSession, root: str) -> dict[str, str]:
    out = remote.run_checked(
        session,
        remote.sh('cd -- "$1" && find . -type f -print0 | xargs -0r sha256sum --', root),
        "hashing a directory",
        timeout=3600,
    )
    return _parse_sha256sum(out)


def local_manifest(root: Path) -> dict[str, str]:
    return LocalTree(root).manifest()


def tree_digest(manifest: dict[str, str]) -> str:
    """One sha256 for a directory: over its sorted ``<sha256>  <path>`` lines (sha256sum format)."""
    lines = "".join(f"{manifest[rel]}  {rel}\n" for rel in sorted(manifest))
    return hashlib.sha256(lines.encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# Destinations


@dataclass
class TargetState:
    final: str
    part: str
    exists: bool
    partial_size: int  # -1: no partial file; for trees: 1 if a partial directory exists


class Writer(ABC):
    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def finish(self) -> str:
        """Close the stream and wait; the command's output (a sha256sum line for new files)."""

    @abstractmethod
    def abort(self) -> None: ...


class Destination(ABC):
    """Where data lands, with a temporary name next to the final one."""

    label: str

    @abstractmethod
    def prepare(self, path: str) -> TargetState: ...

    @abstractmethod
    def file_writer(self, part: str, offset: int) -> Writer: ...

    @abstractmethod
    def tar_writer(self, part_dir: str) -> Writer: ...

    def file_writer_from_fd(self, part: str, offset: int, fd: int) -> _LocalProcessWriter | None:
        """A writer whose process reads the data itself from ``fd`` (positioned at ``offset``),
        with no copy through Python; None if this destination has no such path."""
        return None

    def tar_writer_from_fd(self, part_dir: str, fd: int) -> _LocalProcessWriter | None:
        """As :meth:`tar_writer`, the tar stream read by the process itself from ``fd`` (a pipe)."""
        return None

    @abstractmethod
    def sha256(self, path: str) -> str: ...

    @abstractmethod
    def manifest(self, directory: str) -> dict[str, str]: ...

    @abstractmethod
    def remove(self, path: str) -> None: ...

    @abstractmethod
    def remove_files(self, directory: str, rels: list[str]) -> None: ...

    @abstractmethod
    def commit(self, part: str, final: str, overwrite: bool) -> None:
        """Rename ``part`` to ``final`` (replacing it only with ``overwrite``)."""

    @abstractmethod
    def seed(self, final: str, part: str) -> None:
        """Start a partial directory as hard links to an existing copy (for mirrors)."""


class _RemoteWriter(Writer):
    def __init__(self, session: SSHSession, argv: list[str], what: str) -> None:
        self._cm = remote.popen(session, argv)
        self._proc = self._cm.__enter__()
        self._what = what

    def write(self, data: bytes) -> None:
        self._proc.write(data)

    def finish(self) -> str:
        try:
            self._proc.close_stdin()
            out = b"".join(self._proc.chunks())
            self._proc.check(self._what)
            return out.decode(errors="replace")
        finally:
            self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        # Let the remote writer finish what it received before the channel goes: a resume that
        # starts while an old `cat` still appends would interleave data.
        try:
            self._proc.close_stdin()
            self._proc.wait(timeout=30)
        except Exception:  # noqa: S110 - the connection may already be gone
            pass
        finally:
            self._cm.__exit__(None, None, None)


_STATE = (
    'mkdir -p -- "$1" || exit 1; '
    'if [ -e "$2" ] || [ -L "$2" ]; then echo exists; else echo absent; fi; '
    'if [ -f "$3" ]; then stat -c %s -- "$3"; elif [ -d "$3" ]; then echo 1; else echo -1; fi'
)


# truncate drops whatever lies beyond the resume point; cat appends from there.
_APPEND = 'truncate -s "$1" -- "$2" && exec cat >> "$2"'
_UNTAR = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1" --no-same-owner'


class SiteDestination(Destination):
    """A site user's work directory, reached over an open, host-key-verified session."""

    def __init__(self, session: SSHSession, work_dir: str, link: OpenSSHLink | None = None) -> None:
        self.session = session
        self.link = link
        self.work_dir = work_dir
        self.label = f"{session.endpoint.label}:{work_dir}"

    def prepare(self, path: str) -> TargetState:
        target = remote.resolve_in(self.session, self.work_dir, path)
        part = target.sibling(PART_PREFIX, PART_SUFFIX)
        out = remote.run_checked(self.session, remote.sh(_STATE, target.parent, target.path, part),
                                 "checking the destination").split()
        return TargetState(target.path, part, out[0] == "exists", int(out[1]))

    def _writer(self, argv: list[str], what: str) -> Writer:
        if self.link is not None:
            return _LocalProcessWriter(None, what, self.link.popen(argv))
        return _RemoteWriter(self.session, argv, what)

    def file_writer(self, part: str, offset: int) -> Writer:
        # truncate drops whatever lies beyond the resume point; cat appends from there. (Hashing
        # in the stream with tee halved the throughput on 2 cores; the file is hashed at rest after.)
        argv = remote.sh(_APPEND, str(offset), part)
        return self._writer(argv, "writing the file")

    def file_writer_from_fd(self, part: str, offset: int, fd: int) -> _LocalProcessWriter | None:
        if self.link is None:
            return None
        argv = remote.sh(_APPEND, str(offset), part)
        return _LocalProcessWriter(None, "writing the file", self.link.popen(argv, stdin=fd))

    def tar_writer(self, part_dir: str) -> Writer:
        return self._writer(remote.sh(_UNTAR, part_dir), "unpacking the tar stream")

    def tar_writer_from_fd(self, part_dir: str, fd: int) -> _LocalProcessWriter | None:
        if self.link is None:
            return None
        return _LocalProcessWriter(None, "unpacking the tar stream", self.link.popen(remote.sh(_UNTAR, part_dir),
                                                                                     stdin=fd))

    def sha256(self, path: str) -> str:
        return remote_sha256(self.session, path)

    def manifest(self, directory: str) -> dict[str, str]:
        return remote_manifest(self.session, directory)

    def remove(self, path: str) -> None:
        self.session.run(["rm", "-rf", "--", path], timeout=600)

    def remove_files(self, directory: str, rels: list[str]) -> None:
        if rels:
            with remote.popen(self.session, remote.sh('cd -- "$1" && xargs -0r rm -f --', directory)) as proc:
                proc.write(b"".join(r.encode() + b"\0" for r in rels))
                proc.close_stdin()
                proc.check("removing bad files")

    def commit(self, part: str, final: str, overwrite: bool) -> None:
        if overwrite:
            # Directories cannot be replaced by rename(2): move the old one aside first.
            script = ('if [ -d "$2" ] && [ ! -L "$2" ]; then old="$2.hpcwaas-old.$$"; mv -T -- "$2" "$old"; '
                      'mv -T -- "$1" "$2" && rm -rf -- "$old"; else mv -f -T -- "$1" "$2"; fi')
        else:
            script = 'if [ -e "$2" ] || [ -L "$2" ]; then echo "$2 exists" >&2; exit 1; fi; mv -T -- "$1" "$2"'
        remote.run_checked(self.session, remote.sh(script, part, final), "moving the data into place")

    def seed(self, final: str, part: str) -> None:
        # tar -x replaces files by unlinking them first, so the existing copy is never modified.
        remote.run_checked(self.session, ["cp", "-al", "--", final, part], "seeding the mirror")


class _LocalProcessWriter(Writer):
    """Writes into a local process: ``tar -x`` for local storage, or ``ssh`` (OpenSSH link) to a site."""

    def __init__(self, argv: list[str] | None, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        if proc is None:
            assert argv is not None
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._proc = proc
        self._what = what

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(data)

    def finish(self) -> str:
        out, err = self._proc.communicate(timeout=3600)
        if self._proc.returncode != 0:
            raise RemoteCommandFailed(f"{self._what} failed (exit {self._proc.returncode}): "
                                      f"{err.decode(errors='replace').strip()[-500:]}", exit_code=self._proc.returncode)
        return (out or b"").decode(errors="replace")

    def running(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True while the process still runs."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return True
        return False

    def abort(self) -> None:
        if self._proc.stdin is None:  # it reads or writes a file itself: it would go on; stop it
            self._proc.kill()
            self._proc.communicate()
            return
        # As for the paramiko writer: let the far side finish what it received before a resume.
        try:
            self._proc.communicate(timeout=30)
        except Exception:
            self._proc.kill()
            self._proc.wait()


class _LocalFileWriter(Writer):
    def __init__(self, part: Path, offset: int) -> None:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        self._fh = os.fdopen(fd, "wb", buffering=CHUNK)

    def write(self, data: bytes) -> None:
        self._fh.write(data)

    def finish(self) -> str:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return ""

    def abort(self) -> None:
        self._fh.close()


class LocalDestination(Destination):
    """A directory on the worker (a local storage target), paths confined to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.label = str(self.root)

    def resolve(self, path: str) -> Path:
        remote.check_relative_text(path)
        target = (self.root / path).resolve()  # an absolute `path` replaces the root, then is checked
        if target == self.root or not target.is_relative_to(self.root):
            raise PathOutsideWorkDir(f"{path!r} resolves outside the storage", field="path")
        return target

    def prepare(self, path: str) -> TargetState:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{PART_PREFIX}{target.name}{PART_SUFFIX}")
        size = part.stat().st_size if part.is_file() else (1 if part.is_dir() else -1)
        return TargetState(str(target), str(part), target.exists() or target.is_symlink(), size)

    def file_writer(self, part: str, offset: int) -> Writer:
        return _LocalFileWriter(Path(part), offset)

    def tar_writer(self, part_dir: str) -> Writer:
        Path(part_dir).mkdir(parents=True, exist_ok=True)
        return _LocalProcessWriter(["tar", "-x", "-f", "-", "-C", part_dir, "--no-same-owner"], "tar -x")

    def sha256(self, path: str) -> str:
        return sha256_file(Path(path))

    def manifest(self, directory: str) -> dict[str, str]:
        return local_manifest(Path(directory))

    def remove(self, path: str) -> None:
        p = Path(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def remove_files(self, directory: str, rels: list[str]) -> None:
        for rel in rels:
            (Path(directory) / rel).unlink(missing_ok=True)

    def commit(self, part: str, final: str, overwrite: bool) -> None:
        dst = Path(final)
        if dst.exists() or dst.is_symlink():
            if not overwrite:
                raise DestinationExists(f"{final} exists", path=final)
            if dst.is_dir() and not dst.is_symlink():
                old = dst.with_name(f"{dst.name}.hpcwaas-old.{os.getpid()}")
                os.rename(dst, old)
                os.rename(part, dst)
                self.remove(str(old))
                return
        os.replace(part, dst)

    def seed(self, final: str, part: str) -> None:
        subprocess.run(["cp", "-al", "--", final, part], check=True, capture_output=True)


# ------------------------------------------------------------------------------------------
# The two operations


@dataclass
class TransferResult:
    """What a transfer produced (the DAG's XCom result, the catalogue's registration input)."""

    kind: str  # "file" | "directory"
    source: str
    destination: str
    path: str
    size: int
    files: int
    sha256: str  # the file's sha256, or the directory's tree digest
    resumed_from: int = 0  # bytes (file) or files (directory) already there
    seconds: float = 0.0
    first_byte_at: float | None = None
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _direct_fd_source(source: FileSource, destination: Destination) -> bool:
    """Whether ``ssh`` can read the local source file itself (no copy of the bytes through Python).

    Only for a plain :class:`LocalFile` (a subclass that changes how it is read keeps the
    chunked path) going to a destination with such a writer (a site reached through OpenSSH)."""
    return (isinstance(source, LocalFile) and type(source).open is LocalFile.open
            and type(destination).file_writer_from_fd is not Destination.file_writer_from_fd
            and getattr(destination, "link", None) is not None)


def _send_local_file(source: LocalFile, destination: Destination, part: str, offset: int, hash_it: bool,
                     report: _Reporter) -> tuple[str | None, int]:
    """Stream a local file from ``offset`` with the file itself as ``ssh``'s stdin; (sha256, end offset).

    The ``ssh`` process shares the open file description, so its read position (``lseek`` on our
    descriptor) is the progress. The source hash, when wanted, is computed by a thread reading the
    same file at the same time (from the page cache): if the file changed while it was sent, the
    two reads differ and the destination's hash will not match, so the transfer fails."""
    fd = os.open(source.path, os.O_RDONLY)
    hashed: list[str] = []
    hasher: threading.Thread | None = None
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        writer = destination.file_writer_from_fd(part, offset, fd)
        assert writer is not None
        if hash_it:
            hasher = threading.Thread(target=lambda: hashed.append(sha256_file(source.path)), daemon=True)
            hasher.start()
        report.state.bytes_done = seen = offset
        try:
            interval = 0.002  # fine until the first byte (its time is measured), then 4 times a second
            while writer.running(interval):
                now = os.lseek(fd, 0, os.SEEK_CUR)
                if now > seen:
                    report.add(now - seen)
                    seen, interval = now, 0.25
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        end = os.lseek(fd, 0, os.SEEK_CUR)
        report.add(end - seen)
    finally:
        os.close(fd)
        if hasher is not None:
            hasher.join()
    if hash_it and not hashed:
        raise SourceUnavailable(f"cannot read {source.path} to hash it", path=str(source.path))
    return (hashed[0] if hashed else None), end


def _direct_fd_target(source: FileSource, destination: Destination) -> bool:
    """Whether ``ssh`` can write a site file straight into a local partial file (stage-out)."""
    return (isinstance(source, SiteFile) and type(source).open is SiteFile.open and source.link is not None
            and isinstance(destination, LocalDestination) and type(destination).file_writer is
            LocalDestination.file_writer)


def _receive_site_file(source: SiteFile, part: str, offset: int, hash_it: bool,
                       report: _Reporter) -> tuple[str | None, int]:
    """``ssh site tail -c +N file`` with the local partial file as its stdout; (sha256, end offset).

    The partial file is opened here (no symlink followed) and shared with ``ssh``: its offset is the
    progress. The source hash, when wanted, is computed at rest on the site meanwhile (over the
    paramiko session, on the site's CPU); the local copy is hashed at rest afterwards."""
    assert source.link is not None
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    hashed: list[str] = []
    failed: list[BaseException] = []

    def site_hash() -> None:
        try:
            hashed.append(source.sha256_at_rest())
        except BaseException as exc:  # reported below, in the calling thread
            failed.append(exc)

    hasher = threading.Thread(target=site_hash, daemon=True) if hash_it else None
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        proc = source.link.popen(["tail", "-c", f"+{offset + 1}", "--", source.path], stdin=subprocess.DEVNULL,
                                 stdout=fd)
        writer = _LocalProcessWriter(None, "reading the source file", proc)
        if hasher is not None:
            hasher.start()
        report.state.bytes_done = seen = offset
        try:
            interval = 0.002  # fine until the first byte (its time is measured), then 4 times a second
            while writer.running(interval):
                now = os.lseek(fd, 0, os.SEEK_CUR)
                if now > seen:
                    report.add(now - seen)
                    seen, interval = now, 0.25
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        end = os.lseek(fd, 0, os.SEEK_CUR)
        report.add(end - seen)
        os.fsync(fd)
    finally:
        os.close(fd)
        if hasher is not None and hasher.is_alive():
            hasher.join()
    if failed:
        raise failed[0]
    return (hashed[0] if hashed else None), end


def _resume_offset(partial: int, total: int | None, can_rehash: bool) -> int:
    """Where a copy starts: after what a previous attempt wrote, when that can be trusted."""
    offset = max(partial, 0)
    if (total is not None and offset > total) or (offset and not can_rehash):
        return 0
    return offset


def _copy_direct(source: FileSource, destination: Destination, part: str, offset: int, hash_it: bool,
                 report: _Reporter) -> tuple[str | None, int]:
    """A copy through file descriptors (no bytes through Python): local to site, or site to local."""
    if isinstance(source, LocalFile):
        return _send_local_file(source, destination, part, offset, hash_it, report)
    assert isinstance(source, SiteFile)
    return _receive_site_file(source, part, offset, hash_it, report)


def _file_mismatch(source: FileSource, final: str, at_destination: str, declared: str | None,
                   streamed: str | None) -> str | None:
    """Why the copy does not match its source (None when it does): against the declared checksum,
    else against the hash of the whole stream (``streamed``) or of the source at rest."""
    if declared is not None:
        if at_destination == declared:
            return None
        # Tell a source that does not match its declaration from a transfer that broke it.
        if isinstance(source, LocalFile | SiteFile) and source.sha256_at_rest() != declared:
            return f"the source {source.label} does not match the declared sha256 {declared}"
        return (f"the copy at {final} hashes to {at_destination}, not to the declared sha256 {declared} "
                f"of {source.label}")
    at_source = streamed if streamed is not None else source.sha256_at_rest()
    if at_destination != at_source:
        return f"the copy at {final} hashes to {at_destination}, the source to {at_source}"
    return None


def copy_file(
    source: FileSource,
    destination: Destination,
    path: str,
    *,
    overwrite: bool = False,
    resume: bool = True,
    expected_sha256: str | None = None,
    progress: ProgressFn | None = None,
    retries: int = 3,
) -> TransferResult:
    """Copy one file to ``path`` at the destination; see the module docstring for the guarantees."""
    began = time.monotonic()
    declared = check_sha256(expected_sha256) or source.declared_sha256
    if expected_sha256 and source.declared_sha256 and check_sha256(expected_sha256) != source.declared_sha256:
        raise InvalidTransfer("two different expected checksums were given for the source", field="sha256")
    report = _Reporter(progress)
    state = destination.prepare(path)
    if state.exists and not overwrite:
        raise DestinationExists(
            f"{state.final} already exists", hint="choose another path or ask to overwrite it", path=state.final
        )
    total = source.size()
    report.state.bytes_total, report.state.files_total = total, 1
    if overwrite and state.exists and declared is not None and destination.sha256(state.final) == declared:
        # Replacing a file with the very same bytes (a redeployed image, say): nothing to copy.
        report.state.files_done = 1
        report.phase("done")
        return TransferResult(kind="file", source=source.label, destination=destination.label, path=state.final,
                              size=total or 0, files=1, sha256=declared, resumed_from=total or 0,
                              seconds=time.monotonic() - began, skipped=[state.final])
    # After a resume the stream no longer covers the whole file: the source must then be hashed
    # at rest, or the declared checksum stands for it.
    can_rehash = isinstance(source, LocalFile | SiteFile) or declared is not None
    offset = _resume_offset(state.partial_size if resume else 0, total, can_rehash)
    report.phase("transferring")
    # The worker hashes the stream only when nothing else vouches for the source: a declared
    # checksum (catalogue, image digest) stands for the source, and the destination, hashed at rest
    # on the site, must match it.
    hash_stream = declared is None
    resumed_from: int | None = None
    at_source_stream: str | None = None
    direct = _direct_fd_source(source, destination) or _direct_fd_target(source, destination)
    if direct:
        resumed_from = offset
        at_source_stream, offset = _copy_direct(source, destination, state.part, offset,
                                                hash_stream and offset == 0, report)
    attempt = 0
    streamed = _BackgroundHash() if hash_stream and not direct else None
    while not direct:
        writer = destination.file_writer(state.part, offset)
        try:
            with source.open(offset) as (honoured, chunks):
                if honoured != offset:  # the server ignored Range: start over
                    writer.abort()
                    if streamed is not None:
                        streamed.hexdigest()
                        streamed = _BackgroundHash()
                    offset, resumed_from = 0, 0
                    writer = destination.file_writer(state.part, 0)
                if resumed_from is None:
                    resumed_from = offset
                report.state.bytes_done = offset
                feed = streamed if resumed_from == 0 else None
                for chunk in chunks:
                    writer.write(chunk)
                    if feed is not None:
                        feed.update(chunk)
                    offset += len(chunk)
                    report.add(len(chunk))
            writer.finish()
            break
        except SourceUnavailable:
            # A dropped download resumes from what has been written, a few times.
            with contextlib.suppress(Exception):
                writer.finish()
            attempt += 1
            if attempt > retries or not (isinstance(source, HttpFile) and can_rehash):
                raise
            time.sleep(min(2**attempt, 10))
        except BaseException:
            writer.abort()
            if streamed is not None:
                streamed.hexdigest()  # stop the hashing thread
            raise
    if streamed is not None:
        digest = streamed.hexdigest()  # also stops the hashing thread
        if resumed_from == 0:
            at_source_stream = digest
    report.phase("verifying")
    # The destination is read back at rest on the site: what is compared is what landed on its disk.
    at_destination = destination.sha256(state.part)
    problem = _file_mismatch(source, state.final, at_destination, declared,
                             at_source_stream if resumed_from == 0 else None)
    if problem:
        destination.remove(state.part)
        raise ChecksumMismatch(f"corrupted transfer: {problem}; the partial data was removed",
                               hint="start the transfer again", path=state.final)
    destination.commit(state.part, state.final, overwrite)
    report.state.files_done = 1
    report.phase("done")
    return TransferResult(
        kind="file", source=source.label, destination=destination.label, path=state.final,
        size=offset, files=1, sha256=at_destination, resumed_from=resumed_from or 0,
        seconds=time.monotonic() - began, first_byte_at=report.state.first_byte_at,
    )


@functools.cache
def _gnu_tar() -> bool:
    """Whether the local ``tar`` is GNU tar >= 1.29 (``--verbatim-files-from``)."""
    try:
        out = subprocess.run(["tar", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    first = out.splitlines()[0] if out else ""
    if "GNU tar" not in first:
        return False
    try:
        major, minor = (int(x) for x in first.rsplit(" ", 1)[-1].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (1, 29)


def _direct_tar(source: TreeSource, destination: Destination) -> bool:
    """Whether a local tree can go as ``tar -c`` piped straight into ``ssh`` (no byte through Python)."""
    return (isinstance(source, LocalTree) and type(source).send_tar is LocalTree.send_tar
            and type(destination).tar_writer_from_fd is not Destination.tar_writer_from_fd
            and getattr(destination, "link", None) is not None and _gnu_tar())


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:  # the reader died: its exit status tells why
        pass
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


def _send_local_tree(source: LocalTree, destination: Destination, part_dir: str, files: list[TreeFile],
                     expected: dict[str, str], report: _Reporter) -> None:
    """``tar -c`` (local) | ``ssh ... tar -x`` (site), the pipe between the two processes only.

    Meanwhile the worker hashes each file at rest (into ``expected``); the destination is hashed
    at rest too once unpacked, so a file that changed while it was sent fails the transfer. tar's
    verbose listing counts the files sent."""
    tar = subprocess.Popen(source.tar_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None and tar.stdout is not None and tar.stderr is not None
    writer: _LocalProcessWriter | None = None
    sent = [0]
    messages: list[bytes] = []

    def listing() -> None:
        assert tar.stderr is not None
        for line in tar.stderr:
            if line.startswith(b"tar: "):
                messages.append(line)
            else:
                sent[0] += 1

    reader = threading.Thread(target=listing, daemon=True)
    reader.start()
    try:
        openssh.grow_pipe(tar.stdout.fileno())
        writer = destination.tar_writer_from_fd(part_dir, tar.stdout.fileno())
        assert writer is not None
        tar.stdout.close()  # ssh holds its own copy: tar sees EPIPE if ssh dies
        names = threading.Thread(target=_feed, args=(tar.stdin, b"".join(f.rel.encode() + b"\0" for f in files)),
                                 daemon=True)
        names.start()  # tar reads the names as it goes: hash meanwhile
        for item in files:
            if item.rel not in expected:
                try:
                    expected[item.rel] = sha256_file(source.root / item.rel)
                except OSError as exc:
                    raise SourceUnavailable(f"cannot read {item.rel} in {source.root}: {exc.strerror}",
                                            path=item.rel) from exc
        sizes = [0]
        for item in files:
            sizes.append(sizes[-1] + item.size)
        reported = 0
        while writer.running(0.25):
            now = min(sent[0], len(files))
            if now > reported:
                report.add(sizes[now] - sizes[reported], now - reported)
                reported = now
        writer.finish()
        tar.wait(timeout=60)
    except BaseException:
        if writer is not None:
            writer.abort()
        tar.kill()
        tar.wait()
        raise
    finally:
        reader.join(timeout=10)
    if tar.returncode != 0:  # e.g. a file vanished: what was unpacked stays as a partial copy to resume
        raise StagingError(f"tar -c failed on the worker (exit {tar.returncode}): "
                           f"{b''.join(messages).decode(errors='replace').strip()[-500:]}")
    report.add(sizes[-1] - sizes[reported], len(files) - reported)


def _direct_tar_in(source: TreeSource, destination: Destination) -> bool:
    """Whether a site tree can go as ``ssh site tar -c`` piped straight into a local ``tar -x``."""
    return (isinstance(source, SiteTree) and type(source).send_tar is SiteTree.send_tar
            and type(source).manifest is SiteTree.manifest and source.link is not None
            and isinstance(destination, LocalDestination)
            and type(destination).tar_writer is LocalDestination.tar_writer)


def _follow_listing(untar: subprocess.Popen[bytes], sent: list[int], files: list[TreeFile],
                    report: _Reporter) -> tuple[list[int], int]:
    """Report progress from the count of files the site's tar listed, until the local tar ends;
    the cumulative sizes and how many files were reported."""
    sizes = [0]
    for item in files:
        sizes.append(sizes[-1] + item.size)
    reported = 0
    interval = 0.01
    while True:
        try:
            untar.wait(timeout=interval)
            return sizes, reported
        except subprocess.TimeoutExpired:
            pass
        now = min(sent[0], len(files))
        if now > reported:
            report.add(sizes[now] - sizes[reported], now - reported)
            reported, interval = now, 0.25


def _check_tars(ssh: subprocess.Popen[bytes], untar: subprocess.Popen[bytes], messages: list[bytes]) -> None:
    """Fail when either end of a tar pipe failed, with its own words."""
    assert untar.stderr is not None
    untar_err = untar.stderr.read().decode(errors="replace").strip()
    if ssh.returncode != 0:
        raise RemoteCommandFailed(f"tar on the source site failed (exit {ssh.returncode}): "
                                  f"{b''.join(messages).decode(errors='replace').strip()[-500:]}",
                                  exit_code=ssh.returncode)
    if untar.returncode != 0:
        raise StagingError(f"tar -x failed on the worker (exit {untar.returncode}): {untar_err[-500:]}")


def _receive_site_tree(source: SiteTree, part_dir: str, files: list[TreeFile], expected: dict[str, str],
                       report: _Reporter) -> None:
    """``ssh site tar -c`` | local ``tar -x`` (stage-out of a directory), the pipe between the two
    processes only. Meanwhile the site hashes the tree at rest (over the paramiko session, on the
    site's CPU) unless ``expected`` already holds it; the local copy is hashed at rest afterwards.
    The site tar's verbose listing counts the files sent."""
    assert source.link is not None
    Path(part_dir).mkdir(parents=True, exist_ok=True)
    found: list[dict[str, str]] = []
    failed: list[BaseException] = []

    def site_manifest() -> None:
        try:
            found.append(source.manifest())
        except BaseException as exc:  # reported below, in the calling thread
            failed.append(exc)

    hasher = threading.Thread(target=site_manifest, daemon=True) if not expected else None
    if hasher is not None:
        hasher.start()
    sent = [0]
    messages: list[bytes] = []
    ssh: subprocess.Popen[bytes] | None = None
    untar: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    try:
        if files:
            ssh = source.link.popen(["tar", "-c", "-f", "-", "-C", source.root, "-v", "--null", "-T", "-"])
            assert ssh.stdin is not None and ssh.stdout is not None and ssh.stderr is not None
            untar = subprocess.Popen(["tar", "-x", "-f", "-", "-C", part_dir, "--no-same-owner"], stdin=ssh.stdout,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            ssh.stdout.close()  # the local tar holds its own copy
            err = ssh.stderr

            def listing() -> None:
                for line in err:
                    if line.startswith(b"tar: ") or not line.strip():
                        messages.append(line)
                    else:
                        sent[0] += 1

            reader = threading.Thread(target=listing, daemon=True)
            reader.start()
            threading.Thread(target=_feed, args=(ssh.stdin, b"".join(f.rel.encode() + b"\0" for f in files)),
                             daemon=True).start()
            sizes, reported = _follow_listing(untar, sent, files, report)
            ssh.wait(timeout=60)
            reader.join(timeout=10)
            _check_tars(ssh, untar, messages)
            report.add(sizes[-1] - sizes[reported], len(files) - reported)
    except BaseException:
        for proc in (ssh, untar):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    finally:
        if hasher is not None:
            hasher.join()
        if reader is not None:
            reader.join(timeout=10)
    if failed:
        raise failed[0]
    if found:
        expected.update(found[0])


def copy_tree(
    source: TreeSource,
    destination: Destination,
    path: str,
    *,
    overwrite: bool = False,
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> TransferResult:
    """Copy a directory as one tar stream; a partial copy is completed, not restarted."""
    began = time.monotonic()
    report = _Reporter(progress)
    state = destination.prepare(path)
    if state.exists and not overwrite:
        raise DestinationExists(
            f"{state.final} already exists", hint="choose another path or ask to overwrite it", path=state.final
        )
    files = source.files()
    for item in files:
        remote.check_relative_text(item.rel, "file name")
    report.state.bytes_total = sum(f.size for f in files)
    report.state.files_total = len(files)
    present = destination.manifest(state.part) if resume and state.partial_size > 0 else {}
    expected: dict[str, str] = {}
    receive = _direct_tar_in(source, destination)  # the site hashes its tree while it streams
    if present or not (source.hashes_while_streaming or receive):
        expected = source.manifest()
    done = [f for f in files if f.rel in present and present[f.rel] == expected.get(f.rel)]
    done_names = {f.rel for f in done}
    todo = [f for f in files if f.rel not in done_names]
    report.add(sum(f.size for f in done), len(done))
    report.phase("transferring")

    def on_file(item: TreeFile, digest: str | None) -> None:
        if digest is not None:
            expected[item.rel] = digest
        report.add(0, 1)

    def sink(data: bytes) -> None:
        writer.write(data)
        report.add(len(data))

    if receive:
        assert isinstance(source, SiteTree)
        _receive_site_tree(source, state.part, todo, expected, report)
    elif todo and _direct_tar(source, destination):
        assert isinstance(source, LocalTree)
        _send_local_tree(source, destination, state.part, todo, expected, report)
    elif todo:
        writer = destination.tar_writer(state.part)
        try:
            source.send_tar(todo, sink, on_file)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    report.state.bytes_done = report.state.bytes_total or 0
    report.phase("verifying")
    landed = destination.manifest(state.part) if files else {}
    extra = sorted(set(landed) - set(expected))
    if extra:  # leftovers of an earlier, different partial copy
        destination.remove_files(state.part, extra)
        for rel in extra:
            landed.pop(rel)
    bad = sorted(rel for rel in expected if landed.get(rel) != expected[rel])
    if bad:
        destination.remove_files(state.part, bad)
        raise ChecksumMismatch(
            f"corrupted transfer: {len(bad)} file(s) differ from the source, e.g. {', '.join(bad[:5])}; "
            "they were removed from the partial copy",
            hint="start the transfer again: the files that arrived intact are kept",
            path=state.final,
        )
    if not files:
        destination.tar_writer(state.part).finish()  # an empty directory still lands
    destination.commit(state.part, state.final, overwrite)
    report.phase("done")
    return TransferResult(
        kind="directory", source=source.label, destination=destination.label, path=state.final,
        size=report.state.bytes_total or 0, files=len(files), sha256=tree_digest(expected),
        resumed_from=len(done), seconds=time.monotonic() - began, first_byte_at=report.state.first_byte_at,
        skipped=list(getattr(source, "skipped", [])),
    )


def mirror_tree(source: TreeSource, destination: Destination, path: str, *,
                progress: ProgressFn | None = None) -> TransferResult:
    """Make ``path`` an exact copy of the tree, sending only the files that changed.

    The new state is assembled next to the old one (hard links to unchanged files) and swapped in
    at the end, so readers see either the old copy or the new one.
    """
    state = destination.prepare(path)
    if state.exists and state.partial_size < 0:
        destination.seed(state.final, state.part)
    return copy_tree(source, destination, path, overwrite=True, resume=True, progress=progress)


def site_is_dir(session: SSHSession, path: str) -> bool:
    """Whether ``path`` on the site is a directory (following symlinks)."""
    result = session.run(["test", "-d", path], timeout=60)
    return result.exit_code == 0


def site_source(session: SSHSession, work_dir: str, path: str, declared_sha256: str | None = None,
                link: OpenSSHLink | None = None) -> FileSource | TreeSource:
    """A file or directory of a site, as a source: a relative ``path`` lies inside the work directory,
    an absolute one anywhere the login may read (a catalogue dataset's location is absolute).
    Destinations, by contrast, stay inside the work directory (``SiteDestination``)."""
    if posixpath.isabs(path):
        try:
            resolved = remote.resolve_readable(session, path, field="source path")
        except RemoteCommandFailed as exc:
            raise SourceUnavailable(f"{path} does not exist on the site or cannot be read", path=path) from exc
    else:
        resolved = remote.resolve_in(session, work_dir, path, field="source path")
    try:
        if site_is_dir(session, resolved.path):
            return SiteTree(session, resolved.path, link)
    except (SSHError, RemoteCommandFailed) as exc:
        raise SourceUnavailable(f"cannot read {resolved.path} on the site: {exc}") from exc
    exists = session.run(["test", "-f", resolved.path], timeout=60).exit_code == 0
    if not exists:
        raise SourceUnavailable(f"{resolved.path} does not exist on the site", path=resolved.path)
    return SiteFile(session, resolved.path, declared_sha256, link)


def local_source(root: Path, path: str, declared_sha256: str | None = None) -> FileSource | TreeSource:
    """A file or directory inside a local storage root, as a source."""
    base = LocalDestination(root)
    target = base.resolve(path)
    if target.is_dir():
        return LocalTree(target)
    if not target.is_file():
        raise SourceUnavailable(f"{target} does not exist in the storage root", path=str(target))
    return LocalFile(target, declared_sha256)


def copy(source: FileSource | TreeSource, destination: Destination, path: str, *, overwrite: bool = False,
         resume: bool = True, expected_sha256: str | None = None, progress: ProgressFn | None = None
         ) -> TransferResult:
    """Copy a file or a tree, whichever ``source`` is."""
    if isinstance(source, TreeSource):
        if expected_sha256:
            raise InvalidTransfer("a checksum can only be declared for a single file", field="sha256")
        return copy_tree(source, destination, path, overwrite=overwrite, resume=resume, progress=progress)
    return copy_file(source, destination, path, overwrite=overwrite, resume=resume,
                     expected_sha256=expected_sha256, progress=progress)


__all__ = [
    "Destination",
    "FileSource",
    "HttpFile",
    "LocalDestination",
    "LocalFile",
    "LocalTree",
    "Progress",
    "SiteDestination",
    "SiteFile",
    "SiteTree",
    "TransferResult",
    "TreeSource",
    "copy",
    "copy_file",
    "copy_tree",
    "local_source",
    "mirror_tree",
    "site_source",
    "tree_digest",
]
