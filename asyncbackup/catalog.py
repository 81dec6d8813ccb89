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
from asyncbackup.layout import BACKUPS, name_of_manifest_key, source_group, source_mark_of_key
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
    return await _describe(repo, sizes, sorted(sizes), concurrency=concurrency)


async def _describe(
    repo: Repository, sizes: dict[str, int], names: Sequence[str], *, concurrency: int
) -> list[BackupInfo]:
    """The backups ``names`` from their heads (one range GET each, ``concurrency`` at once),
    sorted as ``read_catalog`` sorts them."""
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
        for name in names:
            await pool.spawn(name, partial(describe, name))
    return sorted(infos.values(), key=lambda i: (bool(i.problem), i.finished, i.name))


async def find_newest(
    repo: Repository, *, host: str, source: str, concurrency: int
) -> BackupInfo | None:
    """The newest backup of ``host`` and ``source`` (an incremental backup's parent), as
    ``newest_of(read_catalog(...))`` finds it, without reading every backup's head.

    Each backup leaves a mark beside its MANIFEST whose key names its host and source (hashed)
    and its finish time (``layout.source_mark_key``), so the one listing of ``backups/`` that
    ``read_catalog`` makes anyway also says which backups are candidates. Only the newest
    candidate's head is read, to confirm it: a mark decides nothing by itself (a backup
    writes its own only after its commit, but anyone who can write to the store can write
    one, and a mark a killed prune left behind may sit beside a reused name's MANIFEST), so one
    whose head says another host or source is passed over for the next. Backups made before marks
    existed have none: their heads are read, as before. Cost: the listing, plus one head per
    unmarked backup, plus one (more only if a mark lies).
    """
    group = source_group(host, source)
    sizes: dict[str, int] = {}
    marked: set[str] = set()
    stamps: dict[str, str] = {}  # of this host and source: name -> its finish time's digits
    async for page in repo.object_pages(BACKUPS):
        for info in page:
            name = name_of_manifest_key(info.key)
            if name is not None:
                sizes[name] = info.size
            elif (mark := source_mark_of_key(info.key)) is not None:
                marked.add(mark[0])
                if mark[1] == group:
                    stamps[mark[0]] = max(stamps.get(mark[0], ""), mark[2])
    unmarked = sorted(n for n in sizes if n not in marked)
    best = newest_of(
        await _describe(repo, sizes, unmarked, concurrency=concurrency), host=host, source=source
    )
    candidates = sorted((n for n in stamps if n in sizes), key=lambda n: (stamps[n], n))
    for name in reversed(candidates):
        found = newest_of(
            await _describe(repo, sizes, [name], concurrency=1), host=host, source=source
        )
        if found is None:
            continue  # a mark that its head belies
        if best is None or (found.finished, found.name) > (best.finished, best.name):
            best = found
        break
    return best


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
