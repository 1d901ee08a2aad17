"""Open a service template from a YAML file, a folder or a CSAR zip, and read YAML safely.

A CSAR is extracted into a private temporary directory with limits on the number of members,
their total size and their compression ratio; members whose path is absolute, contains ``..``
or is a symbolic link are refused. :class:`Package` removes what it extracted on ``cleanup()``
(it is a context manager), which tosca-parser never does for its own extractions.

YAML is read with PyYAML's safe loader plus two guards tosca-parser lacks: an alias-expansion
budget (a "billion laughs" document is refused before anything walks it) and duplicate mapping
keys (PyYAML silently keeps the last one). Every mapping key's line is recorded so errors can
name the line a person must edit.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import yaml

from deployer.errors import Issue, PackageError, TemplateError

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
MAX_CSAR_MEMBERS = 5_000
MAX_CSAR_BYTES = 256 * 1024 * 1024
MAX_CSAR_RATIO = 200  # uncompressed / compressed, per member (zip bombs are far above this)

YamlPath = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """A parsed YAML file: plain Python data and the line (1-based) of every key or item."""

    file: Path
    data: Any
    lines: dict[YamlPath, int] = field(default_factory=dict)

    def line(self, *path: str | int) -> int | None:
        """The line of the deepest recorded prefix of ``path`` (the best place to point at)."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found
        return None


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int) -> int:
    """Nodes the document has once aliases are expanded (memoised: shared nodes counted per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a node reached again while being sized is a recursive alias
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, limit)
            if size > limit:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, limit) + _expanded_size(v, memo, limit)
            if size > limit:
                break
    memo[key] = size
    return size


def _record_lines(node: yaml.Node, path: YamlPath, lines: dict[YamlPath, int], issues: list[Issue], file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            name = str(k.value)
            if name == "<<":
                continue
            if name in seen:
                issues.append(
                    Issue(
                        f"duplicate key {name!r}",
                        file=file,
                        line=k.start_mark.line + 1,
                        field=".".join(map(str, path)) or None,
                    )
                )
            seen.add(name)
            lines[(*path, name)] = k.start_mark.line + 1
            _record_lines(v, (*path, name), lines, issues, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _record_lines(child, (*path, i), lines, issues, file)


def parse_yaml(text: str, file: Path | str, *, display: str | None = None) -> YamlDocument:
    """Parse one YAML document safely; raise TemplateError naming the file and line."""
    shown = display or str(file)
    if len(text.encode()) > MAX_YAML_BYTES:
        raise TemplateError(Issue(f"file is larger than {MAX_YAML_BYTES // 1024 // 1024} MiB", file=shown))
    # The C loader (libyaml) when PyYAML has it: several times faster, same safe constructors.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(Path(file), None, {})
        if _expanded_size(node, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise TemplateError(
                Issue(
                    f"YAML expands to more than {MAX_YAML_NODES} nodes through aliases (alias bomb?)",
                    file=shown,
                    line=node.start_mark.line + 1,
                )
            )
        lines: dict[YamlPath, int] = {}
        issues: list[Issue] = []
        _record_lines(node, (), lines, issues, shown)
        if issues:
            raise TemplateError(issues)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise TemplateError(Issue(f"YAML syntax error: {problem}", file=shown, line=line)) from exc
    except yaml.YAMLError as exc:
        raise TemplateError(Issue(f"YAML error: {exc}", file=shown)) from exc
    except RecursionError as exc:
        raise TemplateError(Issue("YAML is nested too deeply", file=shown)) from exc
    finally:
        loader.dispose()
    return YamlDocument(Path(file), data, lines)


def read_yaml(path: Path, *, root: Path | None = None) -> YamlDocument:
    """Read and parse a YAML file (errors show its path relative to ``root``)."""
    display = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise TemplateError(Issue(f"file is larger than {MAX_YAML_BYTES // 1024 // 1024} MiB", file=display))
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TemplateError(Issue("file not found", file=display)) from exc
    except UnicodeDecodeError as exc:
        raise TemplateError(Issue("file is not UTF-8 text", file=display)) from exc
    except OSError as exc:
        raise TemplateError(Issue(f"cannot read file: {exc.strerror}", file=display)) from exc
    return parse_yaml(text, path, display=display)


def resolve_inside(
    base: Path,
    relative: str,
    *,
    what: str,
    root: Path | None = None,
    file: str | None = None,
    line: int | None = None,
) -> Path:
    """``base / relative`` resolved, refused when it leaves ``root`` (default ``base``): ``..``, absolute, symlink."""
    root = root or base
    if not relative or "\x00" in relative:
        raise TemplateError(Issue(f"{what} path is empty or invalid", file=file, line=line))
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise TemplateError(Issue(f"{what} {relative!r} points outside the template folder", file=file, line=line))
    return candidate


@dataclass
class Package:
    """A service template on disk: its folder, its entry file, and what to clean up."""

    source: Path
    root: Path
    entry: Path
    extracted: Path | None = None

    @property
    def display_entry(self) -> str:
        """The entry file as shown in messages (relative to the package)."""
        return str(self.entry.relative_to(self.root))

    def cleanup(self) -> None:
        """Remove the extraction directory of a CSAR (no-op for files and folders)."""
        if self.extracted is not None:
            shutil.rmtree(self.extracted, ignore_errors=True)
            self.extracted = None

    def __enter__(self) -> Package:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()


def _is_tosca_yaml(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return "tosca_definitions_version" in head


def _entry_from_meta(root: Path, source: Path) -> Path | None:
    meta = root / "TOSCA-Metadata" / "TOSCA.meta"
    if not meta.is_file():
        return None
    shown = "TOSCA-Metadata/TOSCA.meta"
    fields: dict[str, str] = {}
    for raw in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = raw.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    entry = fields.get("Entry-Definitions")
    if not entry:
        raise PackageError(Issue("TOSCA.meta has no Entry-Definitions", file=shown, field="Entry-Definitions"))
    path = resolve_inside(root, entry, what="Entry-Definitions", file=shown)
    if not path.is_file():
        raise PackageError(Issue(f"Entry-Definitions {entry!r} does not exist in {source.name}", file=shown))
    return path


def _entry_of_folder(root: Path, source: Path) -> Path:
    entry = _entry_from_meta(root, source)
    if entry is not None:
        return entry
    candidates = sorted(
        p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and _is_tosca_yaml(p)
    )
    if not candidates:
        raise PackageError(
            Issue(f"no TOSCA service template in {source.name}", file=str(source)),
            hint="add TOSCA-Metadata/TOSCA.meta with Entry-Definitions, or one root-level YAML file",
        )
    with_topology = [p for p in candidates if "topology_template" in p.read_text(encoding="utf-8", errors="replace")]
    if len(with_topology) == 1:
        return with_topology[0]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(p.name for p in candidates)
    raise PackageError(
        Issue(f"several root-level TOSCA files ({names}); cannot tell which is the entry", file=str(source)),
        hint="add TOSCA-Metadata/TOSCA.meta with Entry-Definitions",
    )


def _check_member(info: zipfile.ZipInfo, archive: str) -> PurePosixPath | None:
    name = info.filename
    path = PurePosixPath(name)
    if (
        "\\" in name
        or name.startswith("/")
        or path.is_absolute()
        or ".." in path.parts
        or (len(name) > 1 and name[1] == ":")
    ):
        raise PackageError(Issue(f"member {name!r} would be written outside the extraction folder", file=archive))
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise PackageError(Issue(f"member {name!r} is a symbolic link, which is not allowed", file=archive))
    if info.is_dir():
        return None
    if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_CSAR_RATIO and info.file_size > 1 << 20:
        raise PackageError(Issue(f"member {name!r} has a suspicious compression ratio (zip bomb?)", file=archive))
    return path


def extract_csar(archive: Path, dest: Path) -> None:
    """Extract a CSAR safely into ``dest`` (which must exist and be empty)."""
    shown = archive.name
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(Issue(f"not a valid zip archive: {exc}", file=shown)) from exc
    with zf:
        members = zf.infolist()
        if len(members) > MAX_CSAR_MEMBERS:
            raise PackageError(Issue(f"archive has more than {MAX_CSAR_MEMBERS} members", file=shown))
        declared = sum(m.file_size for m in members)
        if declared > MAX_CSAR_BYTES:
            raise PackageError(Issue(f"archive expands to more than {MAX_CSAR_BYTES >> 20} MiB", file=shown))
        total = 0
        for info in members:
            rel = _check_member(info, shown)
            target = (
                dest.joinpath(*rel.parts) if rel is not None else dest.joinpath(*PurePosixPath(info.filename).parts)
            )
            if rel is None:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # Count real bytes as they stream: headers can lie about sizes.
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 16):
                    total += len(chunk)
                    if total > MAX_CSAR_BYTES:
                        raise PackageError(
                            Issue(f"archive expands to more than {MAX_CSAR_BYTES >> 20} MiB", file=shown)
                        )
                    out.write(chunk)
            os.chmod(target, 0o600)


def open_package(source: str | os.PathLike[str]) -> Package:
    """Open a YAML file, a folder or a CSAR/zip as a :class:`Package` (cleanup() when done)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise PackageError(Issue("no such file or folder", file=str(path)))
    if path.is_dir():
        root = path.resolve()
        return Package(path, root, _entry_of_folder(root, path))
    if path.suffix.lower() in (".csar", ".zip") or zipfile.is_zipfile(path):
        tmp = Path(tempfile.mkdtemp(prefix="hpcwaas-csar-"))
        try:
            extract_csar(path, tmp)
            return Package(path, tmp.resolve(), _entry_of_folder(tmp.resolve(), path), extracted=tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    resolved = path.resolve()
    return Package(path, resolved.parent, resolved)
