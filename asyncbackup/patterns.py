"""Path patterns with gitignore semantics (through the ``pathspec`` library), for backup
excludes and partial restores, and the selection of a backup's entries by them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import msgspec
import pathspec

from asyncbackup.errors import ConfigError
from asyncbackup.manifest import FileEntry, Manifest


class Patterns:
    """Patterns in gitignore syntax, matched against paths relative to a tree's root.

    As in a ``.gitignore`` at the root: ``*.log`` matches at any depth, ``/build`` only at the
    top, ``cache/`` only directories, ``!keep.log`` takes a path back, and a pattern that
    matches a directory matches everything below it.
    """

    def __init__(self, lines: Sequence[str], *, what: str = "pattern") -> None:
        self.lines = tuple(line for line in lines if line.strip() and not line.startswith("#"))
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(self.lines)
        except (ValueError, TypeError) as exc:  # pathspec's pattern errors are ValueErrors
            raise ConfigError(f"invalid {what}: {exc}") from exc

    def __bool__(self) -> bool:
        return bool(self.lines)

    def match(self, path: str, *, is_dir: bool) -> bool:
        """Whether ``path`` (relative, POSIX) matches; a directory is matched as ``path/``, so
        that directory-only patterns apply to it."""
        return self._spec.match_file(path + "/" if is_dir else path)


def read_pattern_files(paths: Iterable[Path]) -> list[str]:
    """The lines of each pattern file (one pattern a line; blank lines and ``#`` comments are
    skipped, as in a ``.gitignore``).

    Raises:
        ConfigError: a file cannot be read.
    """
    lines: list[str] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise ConfigError(f"cannot read the exclude file {path}: {exc.strerror}") from exc
        lines.extend(line.rstrip("\r") for line in text.splitlines())
    return lines


def select(manifest: Manifest, *, include: Patterns, exclude: Patterns) -> Manifest:
    """``manifest`` with only the entries a partial restore takes: those ``include`` matches
    (every entry, if it is empty) that ``exclude`` does not, and the directories above them.
    Pure: run it in a thread for a large MANIFEST.

    Raises:
        ConfigError: the patterns leave nothing to restore.
    """
    if not include and not exclude:
        return manifest
    kept: dict[str, FileEntry] = {}
    for entry in manifest.entries:
        is_dir = entry.type == "dir"
        if include and not include.match(entry.path, is_dir=is_dir):
            continue
        if exclude and exclude.match(entry.path, is_dir=is_dir):
            continue
        kept[entry.path] = entry
    if not kept:
        raise ConfigError(
            f"no entry of backup {manifest.name} matches --include {list(include.lines)} "
            f"and not --exclude {list(exclude.lines)}: nothing to restore "
            "('asyncbackup show --files' lists its entries)"
        )
    wanted = set(kept)
    for path in kept:  # the directories above each one, so that it has a place to go
        parts = path.split("/")
        wanted.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    relinked = _relink(kept)
    entries = tuple(
        relinked.get(e.path, e) for e in manifest.entries if e.path in wanted or _is_root(e)
    )
    return replace(manifest, entries=entries)


def _relink(kept: dict[str, FileEntry]) -> dict[str, FileEntry]:
    """Hard links whose first name is left out: the first of them kept becomes the file the
    others link to, so they are still restored as one file."""
    leaders: dict[str, str] = {}  # a first name left out -> the name that stands in for it
    changed: dict[str, FileEntry] = {}
    for path in sorted(kept):
        entry = kept[path]
        if not entry.hardlink or entry.hardlink in kept:
            continue
        stand_in = leaders.setdefault(entry.hardlink, path)
        changed[path] = msgspec.structs.replace(
            entry, hardlink="" if stand_in == path else stand_in
        )
    return changed


def _is_root(entry: FileEntry) -> bool:
    return entry.path == "."  # the source directory itself, where a MANIFEST records it
