"""``asyncbackup show``: one backup's MANIFEST as a script (JSON) or a person (text) reads it."""

from __future__ import annotations

import stat
from datetime import datetime
from typing import Any

from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import FileEntry, Manifest

_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def duration(manifest: Manifest) -> float | None:
    """Seconds from the backup's start to its commit, or None if a time is unreadable."""
    try:
        started = datetime.fromisoformat(manifest.started)
        finished = datetime.fromisoformat(manifest.finished)
        return round((finished - started).total_seconds(), 3)
    except (TypeError, ValueError):  # naive and aware mixed, or not a time at all
        return None


def document(manifest: Manifest) -> dict[str, Any]:
    """Everything the MANIFEST says, with its totals and duration worked out, and one entry per
    file, directory and link exactly as the MANIFEST holds it."""
    return {
        "name": manifest.name,
        "format_version": manifest.format_version,
        "job_id": manifest.job_id,
        "started": manifest.started,
        "finished": manifest.finished,
        "seconds": duration(manifest),
        "host": manifest.host,
        "source": manifest.source,
        "tags": list(manifest.tags),
        "chunk_size": manifest.chunk_size,
        "compression": manifest.compression,
        "compressed_chunks": compressed_chunks(manifest),
        "totals": dict(manifest.totals.__dict__),
        "warnings": [w.to_json() for w in manifest.warnings],
        "excludes": manifest.excludes.to_json() if manifest.excludes is not None else None,
        "entries": [e.to_json() for e in manifest.entries],
    }


def text(manifest: Manifest, *, files: bool) -> str:
    """A summary, one fact a line; with ``files``, then one ``ls -l``-like line per entry."""
    t = manifest.totals
    seconds = duration(manifest)
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    lines = [
        f"name            {manifest.name}",
        f"started         {manifest.started}",
        f"finished        {manifest.finished}{took}",
        f"host            {manifest.host}",
        f"source          {printable(manifest.source)}",
        f"tags            {', '.join(manifest.tags) if manifest.tags else '-'}",
        f"files           {t.files} ({_size(t.bytes)})",
        f"dirs            {t.dirs}",
        f"links           {t.symlinks}",
        f"chunks          {t.chunks} ({t.unique_chunks} unique)",
        f"chunk size      {_size(manifest.chunk_size)}",
        f"compression     {_compression(manifest)}",
        f"format version  {manifest.format_version}",
        f"job id          {manifest.job_id}",
        f"warnings        {len(manifest.warnings)}",
    ]
    if manifest.excludes is not None:
        lines.insert(-1, f"excludes        {_excludes(manifest)}")
    lines.extend(
        f"  {w.kind:<10} {printable(w.path)}: {printable(w.message)}" for w in manifest.warnings
    )
    if files:
        lines.append("")
        lines.extend(_entry_line(e) for e in manifest.entries)
    return "\n".join(lines)


def compressed_chunks(manifest: Manifest) -> int:
    """How many of the backup's distinct chunks are stored compressed (the others did not
    shrink, or were stored raw by an earlier backup)."""
    refs = {ref for entry in manifest.entries for ref in entry.chunks}
    return sum(1 for ref in refs if digest_of_ref(ref) != ref)


def _compression(manifest: Manifest) -> str:
    if manifest.compression == "none":
        return "none"
    unique = manifest.totals.unique_chunks
    return f"{manifest.compression} ({compressed_chunks(manifest)} of {unique} chunks compressed)"


def _excludes(manifest: Manifest) -> str:
    x = manifest.excludes
    assert x is not None
    parts = [printable(" ".join(x.patterns))] if x.patterns else []
    parts += ["--exclude-caches"] if x.exclude_caches else []
    parts += [f"--exclude-if-present {printable(n)}" for n in x.exclude_if_present]
    parts += ["--one-file-system"] if x.one_file_system else []
    parts += [f"the store at {printable(x.store)}"] if x.store else []
    return "; ".join(parts)


def _entry_line(entry: FileEntry) -> str:
    mode = stat.filemode(_TYPE_BITS[entry.type] | entry.mode)
    when = datetime.fromtimestamp(entry.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    path = printable(entry.path)
    if entry.type == "symlink":
        path += f" -> {printable(entry.target)}"
    return f"{mode} {entry.size:>14,} {when}  {path}"


def printable(name: str) -> str:
    """``name`` fit for a terminal: bytes that are not UTF-8 as ``\\xNN``, a newline as ``\\n``."""
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"
