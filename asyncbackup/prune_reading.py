"""What prune reads before it deletes anything (steps 1 to 3 of ``prune.py``): the listing of
``backups/``, every MANIFEST, and the INDEX of every backup that stays and packs chunks. Any one
that cannot be read stops the prune, having deleted nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial

from asyncbackup.config import EngineConfig
from asyncbackup.errors import ManifestError
from asyncbackup.layout import BACKUPS, INDEX, index_key, name_of_manifest_key, source_mark_of_key
from asyncbackup.manifest import PACKED_FORMAT_VERSION, Manifest
from asyncbackup.packuse import LivePacks
from asyncbackup.pool import TaskPool
from asyncbackup.repository import Repository
from asyncbackup.retention import Candidate
from asyncbackup.storage.base import ObjectInfo
from asyncbackup.threads import to_thread

OPERATION = "prune"


class PruneReading:
    """``PruneJob``'s reads of the store before its first delete (``PruneJob`` sets these)."""

    repo: Repository
    config: EngineConfig
    _interned: dict[str, str]

    async def _list_backups(
        self, cutoff: float
    ) -> tuple[list[str], list[str], dict[str, list[str]]]:
        """The names of every committed backup, sorted; the INDEXes older than ``cutoff``
        whose backup has no MANIFEST: left by a backup that failed before its commit, or by a
        prune or delete killed between a MANIFEST's delete and its INDEX's; and the keys of
        the source marks under each name, with or without a MANIFEST. No backup runs now (the
        lock), so none of them is about to be committed."""
        names: list[str] = []
        indexes: dict[str, ObjectInfo] = {}
        marks: dict[str, list[str]] = {}
        async for page in self.repo.object_pages(BACKUPS):
            for obj in page:
                name = name_of_manifest_key(obj.key)
                if name is not None:
                    names.append(name)
                elif (mark := source_mark_of_key(obj.key)) is not None:
                    marks.setdefault(mark[0], []).append(obj.key)
                elif (
                    obj.key.count("/") == 2
                    and obj.key.endswith("/" + INDEX)
                    and obj.modified < cutoff
                ):
                    indexes[obj.key] = obj
        kept = {index_key(n) for n in names}
        return sorted(names), sorted(k for k in indexes if k not in kept), marks

    async def _read_all(
        self, names: Iterable[str], *, stopped: str = "prune stopped and deleted nothing"
    ) -> dict[str, _Backup]:
        """What prune needs of each backup; each MANIFEST is let go as soon as it is read (one
        of 100,000 files holds about 50 MiB once parsed).

        Raises:
            ManifestError: a MANIFEST cannot be read or has no valid time (``stopped`` says
                how far the prune got).
        """
        backups: dict[str, _Backup] = {}
        broken: dict[str, str] = {}

        async def read(name: str) -> None:
            try:
                manifest = await self.repo.load_manifest(name)
                finished = _finished(manifest)
            except ManifestError as exc:
                broken[name] = str(exc)
                return
            refs = await to_thread(self._refs_of, manifest)
            candidate = Candidate(
                name, finished, manifest.host, manifest.source, tuple(manifest.tags)
            )
            packed = manifest.format_version >= PACKED_FORMAT_VERSION
            backups[name] = _Backup(candidate, refs, packed, manifest.chunk_size)

        async with TaskPool(OPERATION, limit=self.config.concurrency) as pool:
            for name in names:
                await pool.spawn(name, partial(read, name))
        if broken:
            first = sorted(broken)[0]
            more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
            raise ManifestError(
                f"{stopped}: the MANIFEST of backup {first!r} "
                f"cannot be read ({broken[first]}){more}. The chunks of a backup that cannot be "
                "read would look unused, and removing them could destroy it. Repair it, or "
                f"remove it with 'asyncbackup delete STORE {first}' if it is beyond repair, "
                "then run prune again"
            )
        return backups

    def _refs_of(self, manifest: Manifest) -> frozenset[str]:
        intern = self._interned.setdefault  # atomic under the GIL: threads may share it
        return frozenset(intern(ref, ref) for entry in manifest.entries for ref in entry.chunks)

    async def _read_indexes(self, staying: dict[str, _Backup]) -> LivePacks:
        """Fold the INDEX of every staying backup that packs chunks into ``LivePacks``, one at
        a time, and leave in each such backup's ``refs`` only the chunks it stores as objects.

        Raises:
            ManifestError: an INDEX cannot be read; nothing was deleted.
        """
        live = LivePacks()
        folding = asyncio.Lock()
        broken: dict[str, str] = {}

        async def read(name: str, backup: _Backup) -> None:
            try:
                index = await self.repo.load_index(name)
            except ManifestError as exc:
                broken[name] = str(exc)
                return
            async with folding:  # one fold at a time: they update the same dicts
                await to_thread(live.fold, name, index, chunk_size=backup.chunk_size)
            staying[name] = replace(backup, refs=backup.refs - index.places.keys())

        async with TaskPool(OPERATION, limit=self.config.concurrency) as pool:
            for name, backup in sorted(staying.items()):
                if backup.packed:
                    await pool.spawn(f"INDEX of {name}", partial(read, name, backup))
        if broken:
            first = sorted(broken)[0]
            more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
            raise ManifestError(
                f"prune stopped and deleted nothing: the INDEX of backup {first!r} cannot be "
                f"read ({broken[first]}){more}. Without it, the packs holding that backup's "
                "chunks would look unused. Remove the backup with 'asyncbackup delete STORE "
                f"{first}' if it is beyond repair, then run prune again"
            )
        return live


@dataclass(frozen=True)
class _Backup:
    """What prune keeps of a MANIFEST: what retention needs (when it finished, host, source,
    tags), the chunks it names (once its INDEX is read: those it stores as objects), whether it
    has an INDEX, and its chunk size (the bound for decoding its chunks)."""

    candidate: Candidate
    refs: frozenset[str]
    packed: bool = False
    chunk_size: int = 0


def _finished(manifest: Manifest) -> datetime:
    """When the backup finished, as an aware UTC time.

    Raises:
        ManifestError: the time is not ISO 8601.
    """
    try:
        finished = datetime.fromisoformat(manifest.finished)
    except ValueError:
        raise ManifestError(
            f"backup {manifest.name!r}: its finished time {manifest.finished!r} is not ISO 8601"
        ) from None
    if finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)
    return finished.astimezone(UTC)
