"""The backups a store holds, from each MANIFEST's head alone: ``list``, and finding a parent.

Each MANIFEST's head (its first zstd frame, see ``manifest_encoding``) is read with one range
request of ``HEAD_READ`` bytes, so listing a store costs one listing page per 1,000 backups plus
one small GET per backup, whatever the size of each backup; nothing is parsed but the heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from asyncbackup.errors import BackupError
from asyncbackup.pool import TaskPool
from asyncbackup.repository import Repository


@dataclass(frozen=True)
class BackupInfo:
    """One committed backup, as ``list`` shows it. ``problem`` is set if its MANIFEST is bad."""

    name: str
    started: str = ""
    finished: str = ""
    host: str = ""
    source: str = ""
    files: int = 0
    bytes: int = 0
    chunks: int = 0
    problem: str = ""
    tags: list[str] = field(default_factory=list)
    parent: str = ""
    format_version: int = 0


@dataclass(frozen=True)
class Filters:
    """Which backups ``list`` shows: each given filter must match (tags: every one given)."""

    host: str | None = None
    source: str | None = None
    tags: Sequence[str] = ()

    def match(self, info: BackupInfo) -> bool:
        return (
            (self.host is None or info.host == self.host)
            and (self.source is None or info.source == self.source)
            and all(t in info.tags for t in self.tags)
        )


async def read_catalog(repo: Repository, *, concurrency: int) -> list[BackupInfo]:
    """Every committed backup, sorted by finish time, oldest first (then by name); a backup
    whose MANIFEST cannot be read is listed last, with its problem."""
    sizes = await repo.backup_sizes()  # one listing: each MANIFEST's name and size
    infos: dict[str, BackupInfo] = {}

    async def describe(name: str) -> None:
        try:
            head = await repo.read_head(name, size=sizes[name])
            infos[name] = _info(name, head)
        except BackupError as exc:
            infos[name] = BackupInfo(name, problem=str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            infos[name] = BackupInfo(name, problem=f"its MANIFEST's head is malformed ({exc!r})")

    async with TaskPool("list", limit=concurrency) as pool:
        for name in sorted(sizes):
            await pool.spawn(name, partial(describe, name))
    return sorted(infos.values(), key=lambda i: (bool(i.problem), i.finished, i.name))


def newest_of(infos: Sequence[BackupInfo], *, host: str, source: str) -> BackupInfo | None:
    """The backup of ``host`` and ``source`` that finished last: an incremental backup's parent."""
    same = [i for i in infos if not i.problem and i.host == host and i.source == source]
    return max(same, key=lambda i: (i.finished, i.name), default=None)


def _info(name: str, head: dict[str, Any]) -> BackupInfo:
    totals = head.get("totals", {})
    tags = head.get("tags", [])
    if not isinstance(totals, dict) or not isinstance(tags, list):
        raise ValueError("totals or tags of the wrong type")
    return BackupInfo(
        name,
        started=str(head["started"]),
        finished=str(head["finished"]),
        host=str(head["host"]),
        source=str(head["source"]),
        files=int(totals.get("files", 0)),
        bytes=int(totals.get("bytes", 0)),
        chunks=int(totals.get("unique_chunks", 0)),
        tags=[str(t) for t in tags],
        parent=str(head.get("parent", "")),
        format_version=int(head["format_version"]),
    )
