"""Hard links at backup time: a file with several names is read once, under the first name the
walk finds; each other name is recorded as a hard link to it, with the same content, so that a
restore makes one file with several names again (and an older reader, or a partial restore
without the first name, still restores each name from its chunks)."""

from __future__ import annotations

import os

import msgspec

from asyncbackup.manifest import FileEntry


class HardLinks:
    """Which names of multiply-linked files the walk has found, by (device, inode)."""

    def __init__(self) -> None:
        self._first: dict[tuple[int, int], str] = {}
        self._others: list[tuple[str, str]] = []  # (name, the first name of its file)

    def claim(self, path: str, st: os.stat_result) -> bool:
        """True if ``path`` is another name of a file already found: it is recorded as a link
        and must not be read again."""
        if st.st_nlink < 2:
            return False
        first = self._first.setdefault((st.st_dev, st.st_ino), path)
        if first == path:
            return False
        self._others.append((path, first))
        return True

    def leaders(self) -> set[str]:
        """The first names of the files that other names link to."""
        return {first for _, first in self._others}

    def entries(self, taken: dict[str, FileEntry]) -> tuple[list[FileEntry], list[tuple[str, str]]]:
        """The entries of the other names, from their first name's entry in ``taken``; and the
        (name, first name) pairs whose first name was not taken (it vanished or was unreadable)."""
        linked: list[FileEntry] = []
        lost: list[tuple[str, str]] = []
        for path, first in self._others:
            leader = taken.get(first)
            if leader is None:
                lost.append((path, first))
            else:
                linked.append(msgspec.structs.replace(leader, path=path, hardlink=first))
        return linked, lost
