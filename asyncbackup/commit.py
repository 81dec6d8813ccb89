"""``commit``: check every shard record of a backup, write its one MANIFEST, remove the records.

Under a shared repository lock (a prune waits; other backups and shards go on):

1. Read the records ``shards/<name>/0..N-1.record`` (one listing of ``shards/<name>/``, then a
   GET each). A record missing (its shard failed, or never ran), damaged or edited refuses the
   commit, naming each shard and where it ran or started.
2. Check them against each other (``shard_merge.py``): the same backup, shard count, source
   and options; every path taken by the shard it belongs to (``shard_of``), hence no path
   twice; the merged entries a valid tree (checked as a restore's parse checks it).
3. Merge the records' INDEX parts (``shard_index.py``) and check that every chunk they name
   is stored (``shard_index.unstored``): one listing of ``chunks/``, and one of ``packs/`` for
   every pack the merged INDEX places a chunk in. Between a shard's end and this commit no
   lock protected them; prune keeps the chunks records name, and this check
   makes the commit safe whatever happened meanwhile (a prune of an older version, a lifecycle
   rule, a chunk deleted by hand). Under this commit's lock, no prune removes one until after
   the MANIFEST is written.
4. Write the merged INDEX (if any chunk is packed), then the MANIFEST (create-only, format 4
   when packed, as a backup's commit), then remove the records and start markers. Its
   ``job_id`` is derived from the records, so a commit re-run after it wrote the MANIFEST but
   before it removed the records recognises its own MANIFEST and finishes; one re-run after
   it wrote the INDEX but not the MANIFEST writes the same INDEX again (the same records
   merge to the same places).

Nothing is committed unless every check passes; the exit code is then 1. Every loop over the
entries or places runs in bounded worker-thread trips, the event loop free between them (see
``shard_merge.py``): a commit of a million files keeps an embedding service responsive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from asyncbackup.errors import (
    BackupFailed,
    ConfigError,
    FailedItem,
    ManifestError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.freeing import drain
from asyncbackup.layout import SHARDS, index_key, manifest_key, shard_key, source_mark_key
from asyncbackup.locks import RepositoryLock
from asyncbackup.manifest import (
    FileEntry,
    Manifest,
    SourceWarning,
)
from asyncbackup.manifest_reader import CHECKS_PER_TRIP
from asyncbackup.progress import Progress, phase
from asyncbackup.repository import Repository
from asyncbackup.shard_index import merge_places, unstored
from asyncbackup.shard_merge import by_path, inconsistencies, job_id, merged
from asyncbackup.shard_records import ShardRecord, read_record
from asyncbackup.shards import ShardSpec
from asyncbackup.threads import in_trips

log = logging.getLogger("asyncbackup")
OPERATION = "commit"


@dataclass(frozen=True)
class CommitSummary:
    """The backup a commit wrote, and the shards it took."""

    name: str
    shards: int
    files: int
    dirs: int
    symlinks: int
    bytes: int
    chunks: int
    seconds: float
    where: tuple[str, ...]  # where each shard ran, by index
    warnings: tuple[SourceWarning, ...] = ()
    already: bool = False  # the MANIFEST was there: an earlier run of this commit wrote it


class CommitJob:
    """Commits backup ``name`` from its ``count`` shard records; see the module docstring."""

    def __init__(
        self,
        repo: Repository,
        *,
        concurrency: int,
        progress: Progress,
        lock: RepositoryLock,
    ) -> None:
        self.repo = repo
        self.concurrency = concurrency
        self.progress = progress
        self.lock = lock

    async def run(self, name: str, count: int) -> CommitSummary:
        """Commit backup ``name`` from its ``count`` shards.

        Raises:
            ConfigError: ``count`` is out of range, or another backup of this name exists.
            BackupFailed: a shard record is missing, damaged, inconsistent with the others, or
                names a chunk that is not stored; or the store failed. Nothing was committed
                (unless the message says the commit was not confirmed).
            LockError: a prune held the lock for longer than the lock wait.
        """
        ShardSpec(0, count)  # refuses a count out of range
        started = time.monotonic()
        records: list[ShardRecord] = []  # filled by _locked_run, freed here a part at a time
        try:
            async with self.lock:
                summary = await self._locked_run(name, count, records)
        except StorageError as exc:
            raise BackupFailed(OPERATION, [FailedItem(self.repo.store.url, exc)]) from exc
        finally:
            await release(records)
        return replace(summary, seconds=time.monotonic() - started)

    async def _locked_run(self, name: str, count: int, records: list[ShardRecord]) -> CommitSummary:
        phase(self.progress, "reading the shard records")
        present = set(await self.repo.list_keys(f"{SHARDS}{name}/"))
        problems = await self._read_records(name, count, present, records)
        if await self.repo.has_backup(name):
            return await self._committed_already(name, count, records, present)
        problems += await inconsistencies(name, count, records)
        if problems:
            raise BackupFailed(
                OPERATION,
                problems,
                hint=f"run the shards named again (each reuses what it stored), then commit "
                f"again; 'asyncbackup backup ... --shard K/{count}' runs shard K",
            )
        places, conflicts = await merge_places(records)
        if conflicts:
            raise BackupFailed(
                OPERATION, conflicts, hint="run the shards named again, then commit again"
            )
        manifest = await merged(name, records, packed=bool(places))
        phase(self.progress, "checking every chunk is stored")
        lost = await unstored(self.repo, records, places)
        if lost:
            raise BackupFailed(
                OPERATION,
                lost,
                hint="run the shards named again (they upload what is missing), then commit again",
            )
        phase(self.progress, "committing")
        await self.lock.check()
        key = manifest_key(name)
        try:
            if places:  # before the MANIFEST: a MANIFEST never lacks its INDEX
                key = index_key(name)
                await self.repo.put_index(name, places)
                key = manifest_key(name)
            await self.repo.commit(manifest)
        except TransientStorageError as exc:
            raise BackupFailed(
                OPERATION,
                [FailedItem(key, exc)],
                hint="run the same commit again: it finishes what this one began",
                outcome="its commit was not confirmed",
            ) from exc
        await self._mark(manifest)
        await self._remove(present)
        return _summary(manifest, records)

    async def _mark(self, manifest: Manifest) -> None:
        """The committed backup's source mark, as a backup leaves it (``BackupJob._mark``), so
        that the next sharded backup of this source finds it as its parent from a listing. A
        failure is a warning: the next backups then read its head instead."""
        key = source_mark_key(
            manifest.name, host=manifest.host, source=manifest.source, finished=manifest.finished
        )
        try:
            await self.repo.put_object(key, b"", action="mark")
        except StorageError as exc:
            log.warning("backup %s is committed, but its mark %s could not be written (%s)",
                        manifest.name, key, exc)  # fmt: skip

    async def _read_records(
        self, name: str, count: int, present: set[str], ordered: list[ShardRecord]
    ) -> list[FailedItem]:
        """The problems of the records that cannot be read; the others go to ``ordered``, by
        index."""
        records: dict[int, ShardRecord] = {}
        problems: dict[int, FailedItem] = {}
        room = asyncio.Semaphore(self.concurrency)

        async def read(index: int) -> None:
            key = shard_key(name, index)
            if key not in present:
                problems[index] = FailedItem(key, ManifestError(await self._absent(name, index)))
                return
            async with room:
                try:
                    record = await read_record(self.repo, name, index)
                except ManifestError as exc:  # its message names the record
                    problems[index] = FailedItem("", exc)
                    return
            if record is None:
                problems[index] = FailedItem(key, ManifestError("removed while commit ran"))
            else:
                records[index] = record

        async with asyncio.TaskGroup() as group:
            for index in range(count):
                group.create_task(read(index))
        ordered.extend(records[i] for i in sorted(records))
        return [problems[i] for i in sorted(problems)]

    async def _absent(self, name: str, index: int) -> str:
        marker = shard_key(name, index, started=True)
        try:
            started = await self.repo.get_object(marker, action="read shard marker")
        except StorageError:
            return f"shard {index} has no record: it never ran, or never started here"
        where = started.decode("utf-8", "replace").strip()
        return f"shard {index} has no record: it started ({where}) and did not finish"

    async def _committed_already(
        self, name: str, count: int, records: list[ShardRecord], present: set[str]
    ) -> CommitSummary:
        """The MANIFEST exists: ours (an earlier run of this commit wrote it and stopped before
        removing the records), or another backup's of the same name.

        Raises:
            ConfigError: it is another backup's.
        """
        manifest = await self.repo.load_manifest(name)
        entries: dict[str, FileEntry] = {}
        if len(records) == count:
            mine = manifest.job_id == job_id(records)
        else:  # an earlier commit stopped while it removed the records: the rest must match
            await in_trips(by_path(entries), manifest.entries, per_trip=CHECKS_PER_TRIP)

            def differs(theirs: Sequence[FileEntry]) -> bool:
                return any(entries.get(e.path) != e for e in theirs)

            differ = [await in_trips(differs, r.manifest.entries, per_trip=CHECKS_PER_TRIP)
                      for r in records]  # fmt: skip
            mine = not any(differ)
        if records and not mine:
            raise ConfigError(
                f"a backup named {name!r} exists already in {self.repo.store.url}, not made from "
                f"these shard records; they stay: delete that backup, or run the shards again "
                "under another --name"
            )
        log.info("backup %s was committed already; removing its shard records", name)
        await self._remove(present)
        summary = replace(_summary(manifest, records), already=True)
        held = list(manifest.entries)  # the last reference to each entry once these go:
        del manifest  # then freed a part at a time, not in one call as this returns
        entries.clear()
        await drain(held)
        return summary

    async def _remove(self, keys: set[str]) -> None:
        # Records and markers go only after the MANIFEST names every chunk they named.
        async with asyncio.TaskGroup() as group:
            for key in sorted(keys):
                group.create_task(self.repo.delete_object(key))


async def release(records: list[ShardRecord]) -> None:
    """Free ``records`` (emptied) a part at a time (``freeing.drain``): the last references
    to a sharded backup's entries and places, 100,000 of each for as many files. The merged
    MANIFEST and INDEX hold the same objects, so they must be gone first."""
    while records:
        record = records.pop()
        entries, places = list(record.manifest.entries), record.places.places
        del record  # its entries' tuple goes: the list holds each entry now
        await drain(entries, places)


def _summary(manifest: Manifest, records: list[ShardRecord]) -> CommitSummary:
    t = manifest.totals
    return CommitSummary(
        name=manifest.name,
        shards=len(records),
        files=t.files,
        dirs=t.dirs,
        symlinks=t.symlinks,
        bytes=t.bytes,
        chunks=t.unique_chunks,
        seconds=0.0,
        where=tuple(r.where for r in records),
        warnings=manifest.warnings,
    )
