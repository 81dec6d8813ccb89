"""Walking the source tree as a stream, one directory listing at a time, never following links."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asyncbackup.errors import SourceError, SourceVanishedError
from asyncbackup.excludes import Decision, Probe, probe_path
from asyncbackup.threads import to_thread

Kind = Literal["file", "dir", "symlink", "special"]
Decide = Callable[[str, Kind, os.stat_result, Probe], Decision]
"""Asked about each entry (path, kind, lstat, a probe inside it) before it is yielded."""
Unlistable = Callable[[str, SourceError], None]
"""Told of a directory (its relative path) that could not be listed, and why."""


@dataclass(frozen=True)
class SourceEntry:
    """One thing found under the source root. ``path`` is relative and POSIX; names that are not
    UTF-8 keep their bytes as surrogate escapes, so they round-trip."""

    path: str
    kind: Kind
    stat: os.stat_result
    target: str | None = None  # the link text of a symlink
    descend: bool = True  # False: a directory recorded without what it holds


async def walk(
    root: Path, *, decide: Decide | None = None, unlistable: Unlistable | None = None
) -> AsyncIterator[SourceEntry]:
    """Yield every entry below ``root`` (not ``root`` itself), directories before their contents.
    ``decide`` (run in the walk's worker thread) leaves entries out, and directories unlisted.
    ``unlistable`` is told of a directory below the root that cannot be listed (or vanished
    since its parent was), and the walk goes on without its contents.

    Raises:
        SourceError: the root cannot be listed; or a directory below it, without
            ``unlistable``.
    """
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = await to_thread(_scan, root, relative, decide)
        except SourceError as exc:
            if not relative or unlistable is None:
                raise
            unlistable(relative, exc)
            continue
        for entry in entries:
            yield entry
        pending.extend(e.path for e in reversed(entries) if e.kind == "dir" and e.descend)


def _scan(root: Path, relative: str, decide: Decide | None) -> list[SourceEntry]:
    directory = root / relative if relative else root
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
    except FileNotFoundError as exc:
        raise SourceVanishedError(f"{directory} vanished before it was listed") from exc
    except OSError as exc:
        raise SourceError(f"cannot list directory {directory}: {exc.strerror}") from exc
    found: list[SourceEntry] = []
    for name in names:
        path = f"{relative}/{name}" if relative else name
        try:
            st = os.lstat(directory / name)
            target = os.readlink(directory / name) if stat.S_ISLNK(st.st_mode) else None
        except FileNotFoundError:
            continue  # gone between the listing and the lstat: it is not part of this backup
        except OSError as exc:
            raise SourceError(f"cannot read {directory / name}: {exc.strerror}") from exc
        kind = _kind(st.st_mode)
        decision = decide(path, kind, st, probe_path(directory, name)) if decide else "keep"
        if decision != "exclude":
            found.append(SourceEntry(path, kind, st, target, descend=decision == "keep"))
    return found


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"
