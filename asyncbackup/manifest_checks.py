"""Reading a MANIFEST strictly: every field of its head and entries checked, and the tree its
entries make (no path twice, none beneath a file or a link, hard links to a file of the same
content), so that a hostile or damaged MANIFEST is refused before a restore writes anything.
``manifest_reader`` runs these checks in bounded trips; ``manifest.py`` holds what they build."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asyncbackup.errors import ManifestError
from asyncbackup.layout import is_chunk_ref, is_digest
from asyncbackup.manifest import (
    READABLE_VERSIONS,
    ROOT_PATH,
    WARNING_KINDS,
    EntryType,
    ExcludeRecord,
    FileEntry,
    Manifest,
    SourceWarning,
    Totals,
)
from asyncbackup.metadata import parse_owner, parse_xattrs


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
