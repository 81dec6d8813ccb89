"""Walking the source tree as a stream, one directory listing at a time, never following links."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asyncbackup.errors import SourceError
from asyncbackup.threads import to_thread

Kind = Literal["file", "dir", "symlink", "special"]


@dataclass(frozen=True)
class SourceEntry:
    """One thing found under the source root. ``path`` is relative and POSIX; names that are not
    UTF-8 keep their bytes as surrogate escapes, so they round-trip."""

    path: str
    kind: Kind
    stat: os.stat_result
    target: str | None = None  # the link text of a symlink


async def walk(root: Path) -> AsyncIterator[SourceEntry]:
    """Yield every entry below ``root`` (not ``root`` itself), directories before their contents.

    Raises:
        SourceError: a directory cannot be listed.
    """
    pending = [""]
    while pending:
        relative = pending.pop()
        entries = await to_thread(_scan, root, relative)
        for entry in entries:
            yield entry
        pending.extend(e.path for e in reversed(entries) if e.kind == "dir")


def _scan(root: Path, relative: str) -> list[SourceEntry]:
    directory = root / relative if relative else root
    try:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
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
        found.append(SourceEntry(path, _kind(st.st_mode), st, target))
    return found


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"
