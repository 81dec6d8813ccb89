"""The MANIFEST: the commit record of one backup, as JSON, validated strictly when read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import msgspec

from asyncbackup import manifest_encoding
from asyncbackup.errors import ManifestError
from asyncbackup.metadata import (
    Xattrs,
    owner_json,
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
    collector nothing and never brings a collection on (docs/design.md, "Parsing in bounded trips").
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
