"""One backup job: walk, chunk, upload what the store lacks, then commit the MANIFEST."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from asyncbackup.backup_files import SourceFiles
from asyncbackup.backup_state import OPERATION as OPERATION  # re-exported
from asyncbackup.backup_state import BackupState
from asyncbackup.backup_stored import StoredChunks
from asyncbackup.errors import (
    BackupFailed,
    ConfigError,
    FailedItem,
    IntegrityError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.excludes import Excluder, excluder_for
from asyncbackup.layout import index_key, manifest_key, source_mark_key
from asyncbackup.manifest import (
    FORMAT_VERSION,
    PACKED_FORMAT_VERSION,
    FileEntry,
    Manifest,
    SourceWarning,
)
from asyncbackup.packer import Packer
from asyncbackup.packs import PackIndex
from asyncbackup.parent import find_parent
from asyncbackup.pool import TaskPool
from asyncbackup.progress import phase
from asyncbackup.stream import StreamSource, store_stream
from asyncbackup.threads import to_thread
from asyncbackup.walk import walk_batches

log = logging.getLogger("asyncbackup")


@dataclass(frozen=True)
class BackupSummary:
    """What a committed backup holds and what it cost."""

    name: str
    files: int
    dirs: int
    symlinks: int
    skipped: int  # special files (fifos, sockets, devices), never backed up
    bytes: int
    chunks_uploaded: int
    chunks_skipped: int  # already in the store, or repeated within this backup
    bytes_uploaded: int
    retries: int
    seconds: float
    unchanged: int = 0  # files not read: unchanged since the parent
    bytes_read: int = 0  # of the source's files; the rest were unchanged since the parent
    parent: str = ""
    warnings: tuple[SourceWarning, ...] = ()  # files skipped, or stored while they changed


def default_name() -> str:
    """The name of a backup when none is given: the UTC time to the millisecond and six random
    hex digits (``20261124T140724.123Z-3f9a1c``): two jobs started in the same millisecond pick
    the same name once in 16.7 million times, with no coordination (and then the loser exits
    1, nothing lost); names still sort by time."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class BackupJob(SourceFiles, StoredChunks, BackupState):
    """Backs up one directory. The chunks it has read and not yet stored hold at most
    ``config.buffer_budget`` bytes (``buffers``), and are at most ``config.buffered_chunks``."""

    async def run(self, source: Path | StreamSource, name: str) -> BackupSummary:
        """Back up directory (or stream) ``source`` as backup ``name``; nothing is committed
        unless every chunk is stored.

        The job holds a shared repository lock from before it first reads the store until its
        MANIFEST is written, so no prune can remove a chunk it saw (``asyncbackup/locks.py``).

        Raises:
            ConfigError: the source is not a directory, or the name is taken.
            LockError: a prune held the lock for longer than ``--lock-wait``, or this job lost
                its lock before the commit; nothing was committed.
            BackupFailed: a file or chunk failed; each is named, and no MANIFEST was written.
        """
        started_clock = time.monotonic()
        if isinstance(source, Path):
            source = await to_thread(source.absolute)
            if not await to_thread(source.is_dir):
                raise ConfigError(f"source {source} does not exist or is not a directory")
        try:
            async with self.lock:
                manifest = await self._locked_run(source, name)
        except PermanentStorageError:
            raise  # a missing bucket or refused credentials: the message says what to fix
        except StorageError as exc:  # taking or releasing the lock
            failure = FailedItem(self.repo.store.url, exc)
            hint = self.repo.retrier.budget.explain()
            raise BackupFailed(OPERATION, [failure], hint=hint) from exc
        totals = manifest.totals
        summary = BackupSummary(
            name=name,
            files=totals.files,
            dirs=totals.dirs,
            symlinks=totals.symlinks,
            skipped=self.skipped,
            bytes=totals.bytes,
            chunks_uploaded=self.uploaded,
            chunks_skipped=max(0, totals.chunks - self.uploaded),
            bytes_uploaded=self.bytes_uploaded,
            retries=self.repo.retrier.budget.spent,
            seconds=time.monotonic() - started_clock,
            unchanged=self.unchanged,
            bytes_read=self.bytes_read,
            parent=manifest.parent,
            warnings=manifest.warnings,
        )
        held = list(manifest.entries)  # then this list is the last reference to each entry
        del manifest
        await self.release(held)
        return summary

    async def _locked_run(self, source: Path | StreamSource, name: str) -> Manifest:
        """Everything between taking the lock and committing: see ``run``."""
        started = self._now()
        budget = self.repo.retrier.budget

        def hint() -> str:
            return budget.explain() + "Run the same command again: stored chunks are reused."

        try:
            if await self.repo.has_backup(name):
                raise ConfigError(
                    f"a backup named {name!r} exists already in {self.repo.store.url}: "
                    "choose another --name, or delete that backup first"
                )
            if isinstance(source, Path):  # a stream has no files to compare: no parent
                phase(self.progress, "reading the parent")
                self.parent = await find_parent(
                    self.repo,
                    explicit=self.options.parent,
                    host=self.host,
                    source=str(source),
                    rules=self.options.changes,
                    chunk_size=self.config.chunk_size,
                    concurrency=self.config.concurrency,
                )
            await self._learn_stored()
        except PermanentStorageError:
            raise  # a missing bucket or refused credentials: the message says what to fix
        except StorageError as exc:
            failure = FailedItem(self.repo.store.url, exc)
            raise BackupFailed(OPERATION, [failure], hint=hint()) from exc
        excluder: Excluder | None = None
        if isinstance(source, Path):
            excluder = await to_thread(
                excluder_for, source, self.repo.store.url, self.options.excludes
            )
        phase(self.progress, "reading and uploading")
        if self._packs_on:
            self.packer = Packer(
                self.repo,
                pack_size=self.config.pack_size,
                concurrency=self.config.concurrency,
                on_stored=self._pack_stored,
            )
        async with TaskPool(OPERATION, limit=self.config.buffered_chunks, hint=hint) as pool:
            if isinstance(source, StreamSource):
                await store_stream(self, pool, source)
            else:
                assert excluder is not None
                walking = walk_batches(
                    source, decide=excluder.decide, unlistable=self._unlistable, take=self._take
                )
                async with aclosing(walking):
                    async for batch in walking:
                        self._took(batch.taken)
                        for entry in batch.entries:
                            if self._takes(entry):
                                await self._add(pool, entry)
        if self.packer is not None:  # the last pack, partly filled: once every chunk is in
            async with TaskPool(OPERATION, limit=1, hint=hint) as pool:
                await pool.spawn("packs/", self.packer.flush)
        if self.parent is not None:
            await self.parent.forget()
        finished = self._now()
        stored = dict(self.stored)
        index = PackIndex()

        def build_manifest() -> Manifest:  # sorting 100,000 entries would stall the event loop
            unconfirmed = {d for e in self.entries for d in e.chunks if d not in stored}
            if unconfirmed:  # never commit what cannot be restored, whatever the tasks said
                raise IntegrityError(
                    f"backup {name}: {len(unconfirmed)} chunks were never confirmed stored, "
                    "so nothing was committed; run the backup again"
                )
            leaders = self.links.leaders()  # only they are looked up: no map of every entry
            linked, lost = self.links.entries(
                {e.path: e for e in self.entries if e.path in leaders}
            )
            skipped = "{} is a hard link to {}, which was skipped; skipped too"
            lost_links = [SourceWarning(p, "unreadable", skipped.format(p, f)) for p, f in lost]
            for warning in lost_links:
                log.warning("%s", warning.message)
            warnings = self.warnings + lost_links
            # Each entry is rebuilt only if a ref differs from its digest (a compressed chunk);
            # the ready ones are final. Sorted in place: no second list of 100,000 entries.
            entries = [_with_refs(e, stored) for e in (*self.entries, *linked)]
            self.entries.clear()
            entries += self.ready
            self.ready.clear()
            entries.sort(key=_path_of)
            # The INDEX: where each packed chunk the MANIFEST names lies (one it lacks is an
            # object of its own under chunks/).
            index.update(self.places.restricted(c for e in entries for c in e.chunks))
            return Manifest(
                name=name,
                job_id=uuid.uuid4().hex,
                started=started,
                finished=finished,
                host=self.host,
                source=source.label if isinstance(source, StreamSource) else str(source),
                chunk_size=self.config.chunk_size,
                entries=tuple(entries),
                compression=self.config.compression.codec,
                warnings=tuple(sorted(warnings, key=lambda w: w.path)),
                excludes=excluder.record() if excluder is not None else None,
                tags=tuple(dict.fromkeys(self.options.tags)),
                parent=self.parent.name if self.parent is not None else "",
                format_version=PACKED_FORMAT_VERSION if index else FORMAT_VERSION,
            )

        phase(self.progress, "committing")
        manifest = await to_thread(build_manifest)
        await self._commit(manifest, index, hint)
        return manifest

    async def _commit(self, manifest: Manifest, index: PackIndex, hint: Callable[[], str]) -> None:
        """Write the INDEX (if it names packed chunks), then the MANIFEST: the backup's commit
        (a shard writes its shard record, which carries its INDEX, instead).

        Raises:
            LockError: the lock was lost; nothing was committed.
            BackupFailed: the INDEX or MANIFEST write kept failing.
        """
        if index:  # after every pack it names is stored, before the MANIFEST
            try:
                await self.repo.put_index(manifest.name, index)
            except PermanentStorageError:
                raise
            except StorageError as exc:
                failure = FailedItem(index_key(manifest.name), exc)
                raise BackupFailed(OPERATION, [failure], hint=hint()) from exc
        budget = self.repo.retrier.budget
        name = manifest.name
        try:
            # The lock must still be ours: else a prune may have taken it as stale and removed
            # chunks this MANIFEST names. The commit's attempts pass the lock's guard too.
            await self.lock.check()
            await self.repo.commit(manifest)
        except TransientStorageError as exc:
            # An attempt may have stored the MANIFEST before its answer was lost: the outcome
            # is unknown, and saying "nothing was committed" could be a lie.
            raise BackupFailed(
                OPERATION,
                [FailedItem(manifest_key(name), exc)],
                hint=budget.explain()
                + f"'asyncbackup list' shows whether backup {name} is there; if it is not, "
                "run the same command again: stored chunks are reused.",
                outcome="its commit was not confirmed",
            ) from exc
        await self._mark(manifest)

    async def _mark(self, manifest: Manifest) -> None:
        """Leave the committed backup's source mark (``catalog.find_newest``), so that the next
        backup of this host and source finds it as its parent from a listing. After the
        MANIFEST, by the job that committed it: a mark only ever names its own job's MANIFEST
        (unless written by hand). Losing it costs the next backups one head read, no more:
        the backup is committed, so a failure here is a warning."""
        key = source_mark_key(
            manifest.name, host=manifest.host, source=manifest.source, finished=manifest.finished
        )
        try:
            await self.repo.put_object(key, b"", action="mark")
        except StorageError as exc:
            log.warning(
                "backup %s is committed, but its mark %s could not be written (%s): the next "
                "backups read its head to find their parent",
                manifest.name, key, exc,
            )  # fmt: skip

    def _now(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")


def _path_of(entry: FileEntry) -> str:
    return entry.path


def _with_refs(entry: FileEntry, stored: dict[str, str]) -> FileEntry:
    """``entry`` naming each chunk by its ref in the store (its digest, or with a codec's
    suffix), rebuilt only when one differs."""
    if not entry.chunks:
        return entry
    refs = tuple(stored[d] for d in entry.chunks)
    return entry if refs == entry.chunks else msgspec.structs.replace(entry, chunks=refs)
