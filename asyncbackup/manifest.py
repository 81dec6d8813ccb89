"""The MANIFEST: the commit record of one backup, as JSON, validated strictly when read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import msgspec

from asyncbackup import manifest_encoding
from asyncbackup.errors import ManifestError
from asyncbackup.layout import is_chunk_ref, is_digest
from asyncbackup.metadata import (
    Xattrs,
    owner_json,
    parse_owner,
    parse_xattrs,
    xattrs_json,
)

FORMAT_VERSION = 3
"""Version 2 named compressed chunks (``<sha256>.zst``, ``<sha256>.gz``). Version 3 records each
file's ctime and inode (what an incremental backup compares), owners, xattrs and hard links, the
source directory itself as a ``dir`` entry of path ``ROOT_PATH`` (so a restore gives the target
the source's mode and mtime), the backup's tags and parent, what it skipped or stored while it
changed (``warnings``) and what it was told to leave out (``excludes``); it is stored compressed
with zstd (see ``manifest_encoding.py``). Every backup writes version 3; every field added since
version 1 is optional when read, and MANIFESTs of versions 1 and 2 still restore."""
PACKED_FORMAT_VERSION = 4
"""Version 4 is version 3 whose backup also has an INDEX (``backups/<name>/INDEX``, see
``packs.py``) placing some of its chunks inside packs: written only when the backup names a
packed chunk, so that a reader that does not know packs refuses it clearly instead of failing on
a missing chunk. The MANIFEST itself is laid out exactly as version 3."""
READABLE_VERSIONS = (1, 2, 3, PACKED_FORMAT_VERSION)
ROOT_PATH = "."
"""The path of the entry that records the source directory itself (version 3)."""
EntryType = Literal["file", "dir", "symlink"]
WarningKind = Literal["vanished", "unreadable", "changed"]
WARNING_KINDS: tuple[WarningKind, ...] = ("vanished", "unreadable", "changed")


@dataclass(frozen=True)
class SourceWarning:
    """A file the backup could not take as it was: skipped (it vanished, or could not be read),
    or stored as read while it kept changing (``changed``: not a consistent copy)."""

    path: str
    kind: WarningKind
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class ExcludeRecord:
    """What a backup was told to leave out (version 3), so that a reader of the MANIFEST knows
    what is missing on purpose; ``store``: a local store inside the source, left out."""

    patterns: tuple[str, ...] = ()
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    one_file_system: bool = False
    store: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "patterns": list(self.patterns),
            "exclude_caches": self.exclude_caches,
            "exclude_if_present": list(self.exclude_if_present),
            "one_file_system": self.one_file_system,
            "store": self.store,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ExcludeRecord:
        if not isinstance(raw, dict):
            raise ManifestError(f"excludes {raw!r} is not an object")
        texts = raw.get("patterns", []), raw.get("exclude_if_present", [])
        if not all(isinstance(t, list) and all(isinstance(x, str) for x in t) for t in texts):
            raise ManifestError("excludes: patterns and names must be lists of text")
        return cls(
            patterns=tuple(texts[0]),
            exclude_caches=raw.get("exclude_caches") is True,
            exclude_if_present=tuple(texts[1]),
            one_file_system=raw.get("one_file_system") is True,
            store=str(raw.get("store", "")),
        )


class FileEntry(msgspec.Struct, frozen=True, gc=False):
    """One file, directory or symlink of a backup. ``path`` is relative and POSIX.

    A msgspec Struct rather than a dataclass for one reason: ``gc=False``. A backup holds an
    entry per file, twice over with a parent (100,000 files: 200,000 entries), and every
    instance of a Python class is tracked by the cyclic garbage collector, whose full
    collections walk every tracked object while holding the GIL: 50 to 90 ms here, a stall of
    the event loop in whichever thread triggered them. An entry holds only text, numbers and
    tuples of them, so it can never be part of a reference cycle: untracked, it costs the
    collector nothing and never brings a collection on (see docs/design.md "The event loop").
    A changed copy is ``msgspec.structs.replace(entry, field=value)``. Like a slots class, a
    million entries cost half the memory of plain objects."""

    path: str
    type: EntryType
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str = ""
    chunks: tuple[str, ...] = ()  # chunk refs: the raw sha256, plus a codec suffix if compressed
    target: str = ""
    # Version 3 (see metadata.py): the numeric owner, extended attributes, and for a file that
    # is a hard link to an earlier entry, that entry's path (its content is recorded as well).
    uid: int | None = None
    gid: int | None = None
    xattrs: Xattrs = ()
    hardlink: str = ""
    # What an incremental backup compares besides size and mtime (files only); 0: not recorded
    # (a MANIFEST of version 1 or 2), so the file is read.
    ctime_ns: int = 0
    inode: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
        }
        if self.type == "file":
            out.update(size=self.size, sha256=self.sha256, chunks=list(self.chunks))
            if self.hardlink:
                out["hardlink"] = self.hardlink
            if self.ctime_ns or self.inode:
                out.update(ctime_ns=self.ctime_ns, inode=self.inode)
        elif self.type == "symlink":
            out["target"] = self.target
        out.update(owner_json(self.uid, self.gid))
        out.update(xattrs_json(self.xattrs))
        return out

    @property
    def is_version_3(self) -> bool:
        return self.uid is not None or bool(self.xattrs) or bool(self.hardlink)


@dataclass(frozen=True)
class Totals:
    """What a backup holds, as counted from its entries."""

    files: int
    dirs: int
    symlinks: int
    bytes: int
    chunks: int
    unique_chunks: int


class Tally:
    """A backup's totals, counted a batch of entries at a time: in one pass, with no list of
    every file or chunk (only the set of distinct refs)."""

    def __init__(self, entries: Iterable[FileEntry] = ()) -> None:
        self.files = self.dirs = self.symlinks = self.bytes = self.chunks = 0
        self.unique: set[str] = set()
        self.add(entries)

    def add(self, entries: Iterable[FileEntry]) -> None:
        for e in entries:
            if e.type == "file":
                self.files += 1
                self.bytes += e.size
                self.chunks += len(e.chunks)
                self.unique.update(e.chunks)
            elif e.type == "dir":
                self.dirs += e.path != ROOT_PATH
            else:
                self.symlinks += e.type == "symlink"

    def totals(self) -> Totals:
        return Totals(
            files=self.files,
            dirs=self.dirs,
            symlinks=self.symlinks,
            bytes=self.bytes,
            chunks=self.chunks,
            unique_chunks=len(self.unique),
        )


@dataclass(frozen=True)
class Manifest:
    """A committed backup: when, from where, and every entry with the chunks that rebuild it."""

    name: str
    job_id: str
    started: str  # ISO 8601, UTC
    finished: str
    host: str
    source: str
    chunk_size: int
    entries: tuple[FileEntry, ...]
    compression: str = "none"  # the codec asked for; each chunk's ref says how it is stored
    warnings: tuple[SourceWarning, ...] = ()  # files skipped or stored while changing
    excludes: ExcludeRecord | None = None  # what the backup was told to leave out
    tags: tuple[str, ...] = ()  # backup --tag: what list filters and retention select by
    parent: str = ""  # the backup whose unchanged entries this one took, if any
    format_version: int = FORMAT_VERSION  # as read; a backup always writes FORMAT_VERSION
    totals: Totals = field(init=False)
    counted: InitVar[Totals | None] = None  # the totals, if a reader counted them as it went

    def __post_init__(self, counted: Totals | None) -> None:
        object.__setattr__(self, "totals", counted or Tally(self.entries).totals())

    def refs(self) -> set[str]:
        """Every chunk this backup needs, by ref (the name of its key under ``chunks/``)."""
        return {c for e in self.entries for c in e.chunks}

    @property
    def root(self) -> FileEntry | None:
        """The entry of the source directory itself; None in MANIFESTs before version 3."""
        first = self.entries[0] if self.entries else None
        if first is not None and first.path == ROOT_PATH:
            return first
        return next((e for e in self.entries if e.path == ROOT_PATH), None)

    def head(self) -> dict[str, Any]:
        """Everything but the entries: what ``list`` shows, and the first line of the MANIFEST."""
        head: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "job_id": self.job_id,
            "started": self.started,
            "finished": self.finished,
            "host": self.host,
            "source": self.source,
            "chunk_size": self.chunk_size,
            "compression": self.compression,
            "totals": self.totals.__dict__,
            "tags": list(self.tags),
            "parent": self.parent,
        }
        if self.warnings:
            head["warnings"] = [w.to_json() for w in self.warnings]
        if self.excludes is not None:
            head["excludes"] = self.excludes.to_json()
        return head

    def to_json(self) -> bytes:
        """The MANIFEST as plain JSON: the head on the first line, then one line per entry, so a
        large one is encoded and parsed entry by entry (a document of dicts would cost ~1 KB per
        entry at once, and one ``json.loads`` of it holds the GIL for a second). ASCII-only:
        names that are not UTF-8 travel as escapes. ``manifest_encoding`` stores it with zstd."""
        return self.head_line() + self.entry_lines()

    def head_line(self) -> bytes:
        return f'{_compact(self.head())[:-1]},"entries":[\n'.encode("ascii")

    def entry_lines(self) -> bytes:
        return b"".join(self.entry_pieces())

    def entry_pieces(self, per_piece: int = 1000) -> Iterator[bytes]:
        """``entry_lines`` in pieces of ``per_piece`` lines: what a writer streams into the
        compressor, so the lines of 100,000 entries are never held at once."""
        entries = self.entries
        for start in range(0, len(entries), per_piece):
            lines = ",\n".join(_compact(e.to_json()) for e in entries[start : start + per_piece])
            last = start + per_piece >= len(entries)
            yield (lines + ("\n]}\n" if last else ",\n")).encode("ascii")
        if not entries:
            yield b"\n]}\n"

    def to_bytes(self) -> bytes:
        """The MANIFEST as stored: ``to_json``'s head and entries, each a zstd frame; the
        entries are encoded and compressed a piece at a time. Blocking: callers run it in a
        worker thread."""
        return manifest_encoding.encode_pieces(self.head_line(), self.entry_pieces())

    @classmethod
    def from_json(
        cls, data: bytes, *, where: str, limit: int = manifest_encoding.MAX_DECODED_BYTES
    ) -> Manifest:
        """Parse and validate a MANIFEST read from ``where``.

        Raises:
            ManifestError: it is not valid JSON, is of an unknown format version, or names a path
                that is absolute, climbs with '..', repeats, or lies beneath a file or link.
        """
        from asyncbackup.manifest_reader import parse_now  # it builds on this module

        return parse_now(data, where=where, limit=limit)


def _compact(value: dict[str, Any]) -> str:
    # No indent: with one, json falls back to its pure-Python encoder, ~3 KB per entry.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def check_relative_path(path: str) -> str:
    """Return ``path`` if restoring it cannot leave the target directory.

    Raises:
        ManifestError: the path is empty, absolute, or has an empty, '.' or '..' component.
    """
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise ManifestError(f"unsafe path {path!r}: paths must be relative and non-empty")
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise ManifestError(f"unsafe path {path!r}: '.', '..' and empty components are refused")
    return path


def parse_document(doc: Any) -> Manifest:
    """A MANIFEST from its whole JSON document, read at once (one not laid out by line).

    Raises:
        ManifestError: it is not a valid MANIFEST (``parse_head``, ``parse_entry``, ``assemble``).
    """
    version, chunk_size = parse_head(doc)
    entries = tuple(parse_entry(e, chunk_size, version) for e in doc["entries"])
    return assemble(doc, entries)


def parse_head(doc: Any) -> tuple[int, int]:
    """The format version and chunk size of a MANIFEST's head (its document but the entries),
    once they are checked: what reading its entries needs.

    Raises:
        ManifestError: it is not an object, or of a version this one does not read.
    """
    if not isinstance(doc, dict):
        raise ManifestError("the MANIFEST is not a JSON object")
    version = doc.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ManifestError(
            f"format_version {version!r} is not one this version reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}): "
            "it was written by another version of asyncbackup"
        )
    chunk_size = _int(doc["chunk_size"], "chunk_size")
    if chunk_size <= 0:
        raise ManifestError(f"chunk_size {chunk_size} is not positive")
    return version, chunk_size


def assemble(
    doc: dict[str, Any], entries: tuple[FileEntry, ...], *, counted: Totals | None = None
) -> Manifest:
    """The Manifest of head ``doc`` (checked by ``parse_head``) and its parsed ``entries``,
    once the tree they make is checked (``TreeCheck``). ``counted``: given by a reader that
    checked the tree and counted the entries a batch at a time (``manifest_reader``), so
    neither is done again here in one long pass.

    Raises:
        ManifestError: a field of the head is malformed, or the tree is unsafe.
    """
    version, chunk_size = doc["format_version"], doc["chunk_size"]
    compression = doc.get("compression", "none")
    if not isinstance(compression, str):
        raise ManifestError(f"compression {compression!r} is not a codec name")
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ManifestError(f"tags {tags!r} is not a list of strings")
    parent = doc.get("parent", "")
    if not isinstance(parent, str):
        raise ManifestError(f"parent {parent!r} is not a backup name")
    if counted is None:
        tree = TreeCheck()
        tree.add(entries)
        tree.check(entries)
    warnings = tuple(_parse_warning(w) for w in doc.get("warnings", ()))
    excludes = ExcludeRecord.from_json(doc["excludes"]) if "excludes" in doc else None
    return Manifest(
        name=str(doc["name"]),
        job_id=str(doc["job_id"]),
        started=str(doc["started"]),
        finished=str(doc["finished"]),
        host=str(doc["host"]),
        source=str(doc["source"]),
        chunk_size=chunk_size,
        entries=entries,
        compression=compression,
        warnings=warnings,
        excludes=excludes,
        tags=tuple(tags),
        parent=parent,
        format_version=version,
        counted=counted,
    )


def _parse_warning(raw: dict[str, Any]) -> SourceWarning:
    kind = raw["kind"]
    if kind not in WARNING_KINDS:
        raise ManifestError(f"unknown warning kind {kind!r}")
    path, message = raw["path"], raw["message"]
    if not isinstance(path, str) or not isinstance(message, str):
        raise ManifestError(f"a warning's path and message must be text, not {raw!r}")
    return SourceWarning(path, kind, message)


def parse_entry(raw: dict[str, Any], chunk_size: int, version: int) -> FileEntry:
    """One entry of a MANIFEST of ``version`` and ``chunk_size``, checked.

    Raises:
        ManifestError: a path is unsafe, or a field is malformed.
    """
    # One FileEntry per entry, built once: a parent of 100,000 entries is parsed before a
    # backup can start, so every microsecond here is 0.1 s there.
    kind = raw["type"]
    is_root = raw["path"] == ROOT_PATH and kind == "dir" and version >= 3
    path = ROOT_PATH if is_root else check_relative_path(raw["path"])
    mode = _int(raw["mode"], "mode")
    if not 0 <= mode <= 0o7777:
        raise ManifestError(f"{path!r}: mode {mode} is out of range")
    mtime_ns = _int(raw["mtime_ns"], "mtime_ns")
    uid, gid = parse_owner(raw, path)
    xattrs = parse_xattrs(raw, path) if "xattrs" in raw else ()
    hardlink = raw.get("hardlink", "")
    if hardlink:
        check_relative_path(hardlink)
    if kind == "dir":
        return FileEntry(path, "dir", mode, mtime_ns, uid=uid, gid=gid, xattrs=xattrs)
    if kind == "symlink":
        target = raw["target"]
        if not isinstance(target, str) or not target or "\0" in target:
            raise ManifestError(f"{path!r}: a symlink needs a target")
        return FileEntry(
            path, "symlink", mode, mtime_ns, target=target, uid=uid, gid=gid, xattrs=xattrs
        )
    if kind != "file":
        raise ManifestError(f"{path!r}: unknown entry type {kind!r}")
    size = _int(raw["size"], "size")
    sha256 = raw["sha256"]
    chunks = tuple(raw["chunks"])
    if size < 0 or not isinstance(sha256, str) or not is_digest(sha256):
        raise ManifestError(f"{path!r}: bad size or sha256")
    # Version 1 knew raw chunks only: a suffix there is damage, not a codec.
    valid = is_digest if version == 1 else is_chunk_ref
    if not all(isinstance(c, str) and valid(c) for c in chunks):
        raise ManifestError(f"{path!r}: a chunk hash is not a sha256 (with a codec suffix)")
    if len(chunks) != -(-size // chunk_size):
        raise ManifestError(f"{path!r}: {len(chunks)} chunks cannot hold {size} bytes")
    ctime_ns = _int(raw.get("ctime_ns", 0), "ctime_ns")
    inode = _int(raw.get("inode", 0), "inode")
    if ctime_ns < 0 or inode < 0:
        raise ManifestError(f"{path!r}: a negative ctime or inode")
    return FileEntry(
        path,
        "file",
        mode,
        mtime_ns,
        size=size,
        sha256=sha256,
        chunks=chunks,
        ctime_ns=ctime_ns,
        inode=inode,
        uid=uid,
        gid=gid,
        xattrs=xattrs,
        hardlink=hardlink,
    )


class TreeCheck:
    """The checks of the tree a MANIFEST's entries make, in pieces so that a reader can run
    them a batch at a time: ``add`` every entry first (no path twice), then ``check`` each
    (a hard link names a file of the same content; no path lies beneath a file or link)."""

    def __init__(self) -> None:
        self._kinds: dict[str, EntryType] = {}
        self._files: dict[str, FileEntry] = {}

    def add(self, entries: Iterable[FileEntry]) -> None:
        """Raises: ManifestError: a path appears twice."""
        kinds, files = self._kinds, self._files
        for entry in entries:
            if entry.path in kinds:
                raise ManifestError(f"{entry.path!r} appears twice")
            kinds[entry.path] = entry.type
            if entry.type == "file":
                files[entry.path] = entry

    def check(self, entries: Iterable[FileEntry]) -> None:
        """Check ``entries`` against every entry added.

        Raises:
            ManifestError: a hard link names no file of the same content in this backup, or a
                path lies beneath a file or a symlink.
        """
        kinds, files = self._kinds, self._files
        for entry in entries:
            if entry.type == "file":  # a hard link names a file of the same content, not a link
                leader = files.get(entry.hardlink) if entry.hardlink else entry
                if leader is None or leader.hardlink or leader.sha256 != entry.sha256:
                    raise ManifestError(
                        f"{entry.path!r}: hard link to {entry.hardlink!r}, which is not a file "
                        "of the same content in this backup"
                    )
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                ancestor = "/".join(parts[:depth])
                if kinds.get(ancestor, "dir") != "dir":
                    raise ManifestError(
                        f"unsafe path {entry.path!r}: it lies beneath {ancestor!r}, "
                        f"which is a {kinds[ancestor]}, not a directory"
                    )


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestError(f"{what} {value!r} is not an integer")
    return value
