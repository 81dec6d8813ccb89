"""One backup job: walk, chunk, upload what the store lacks, then commit the MANIFEST."""

from __future__ import annotations

import logging
import secrets
import socket
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import msgspec

from asyncbackup.backup_options import BackupOptions
from asyncbackup.batching import ThreadBatch
from asyncbackup.budget import ByteBudget
from asyncbackup.chunking import ChunkReader
from asyncbackup.compression import encode_chunk, preferred_refs
from asyncbackup.config import EngineConfig
from asyncbackup.errors import (
    BackupFailed,
    ConfigError,
    FailedItem,
    IntegrityError,
    ManifestError,
    PermanentStorageError,
    SourceChangedError,
    SourceError,
    SourceVanishedError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.excludes import Excluder, excluder_for
from asyncbackup.layout import digest_of_ref, index_key, manifest_key, source_mark_key
from asyncbackup.links import HardLinks
from asyncbackup.locks import SHARED, RepositoryLock
from asyncbackup.manifest import (
    FORMAT_VERSION,
    PACKED_FORMAT_VERSION,
    EntryType,
    FileEntry,
    Manifest,
    SourceWarning,
    WarningKind,
)
from asyncbackup.metadata import xattrs_of, xattrs_or_warn
from asyncbackup.metrics import Metrics
from asyncbackup.packer import Packer, packed_elsewhere
from asyncbackup.packs import Pack, PackIndex
from asyncbackup.parent import Parent, digests, entry_from_parent, find_parent, spot_check
from asyncbackup.pool import TaskPool
from asyncbackup.progress import Progress, phase
from asyncbackup.repository import Repository
from asyncbackup.stream import StreamSource, store_stream
from asyncbackup.threads import to_thread
from asyncbackup.walk import SourceEntry, walk_batches

log = logging.getLogger("asyncbackup")
OPERATION = "backup"
READS_OF_A_CHANGING_FILE = 3
"""A file that changes while it is read is read again; the last of this many reads is stored as
read, with a warning (or, with ``strict``, the backup fails)."""
Upload = Callable[[str, bytes, str, int], Awaitable[None]]
"""Stores one chunk: (digest, data, label, bytes it holds of the job's buffer budget, which the
upload gives back once done, failed or cancelled)."""
Clock = Callable[[], datetime]
"""The time now, as an aware UTC datetime: a backup's started and finished times."""


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


def utc_clock() -> datetime:
    return datetime.now(UTC)


def default_name() -> str:
    """The name of a backup when none is given: the UTC time to the millisecond and six random
    hex digits (``20261124T140724.123Z-3f9a1c``): two jobs started in the same millisecond pick
    the same name once in 16.7 million times, with no coordination (and then the loser exits
    1, nothing lost); names still sort by time."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class BackupJob:
    """Backs up one directory. The chunks it has read and not yet stored hold at most
    ``config.buffer_budget`` bytes (``buffers``), and are at most ``config.buffered_chunks``."""

    packs = True
    """Whether this job packs small chunks, and writes an INDEX for them (see ``packer.py``).
    A job that sets it False names no chunk that lies in a pack, only chunk objects. (A shard
    packs too: its record carries its INDEX part, ``shard_records.py``.)"""

    def __init__(
        self,
        repo: Repository,
        config: EngineConfig,
        metrics: Metrics,
        progress: Progress,
        *,
        clock: Clock = utc_clock,
        options: BackupOptions | None = None,
        lock: RepositoryLock | None = None,
        host: str | None = None,
    ) -> None:
        self.repo = repo
        # What the MANIFEST records, and whose backups the parent is chosen from: this host,
        # unless the job is one shard of a backup many hosts make (``shards.py``).
        self.host = host if host is not None else socket.gethostname()
        self.parent: Parent | None = None
        self.lock = (
            lock if lock is not None else RepositoryLock(repo, kind=SHARED, operation=OPERATION)
        )
        self.config = config
        self.metrics = metrics
        self.progress = progress
        self.clock = clock
        self.options = options if options is not None else BackupOptions()
        self.warnings: list[SourceWarning] = []
        self.links = HardLinks()
        # Entries hold raw digests while the job runs; the MANIFEST names each chunk's ref.
        self.entries: list[FileEntry] = []
        # Entries final as they are: directories, links, and files unchanged since the parent
        # (their chunks are the parent's refs), taken whole by the walk's worker thread.
        self.ready: list[FileEntry] = []
        # The refs an unchanged file may name: None, the parent's (trusted); else what a
        # listing found, after the parent failed its spot check.
        self.trusted: set[str] | None = None
        # digest -> ref confirmed in the store: listed (under any codec), or uploaded by this job
        self.stored: dict[str, str] = {}
        self.scheduled: set[str] = set()  # stored, or on its way
        # ref -> place of each chunk known to lie in a pack: trusted INDEX entries, and the
        # packs this job stored; the new INDEX is this, for the refs the MANIFEST names
        self.places = PackIndex()
        self.packer: Packer | None = None
        self.skipped = 0
        self.unchanged = 0
        self.bytes_read = 0
        self.uploaded = 0
        self._reads = ThreadBatch()  # small files' reads share worker-thread trips
        self.buffers = ByteBudget(config.buffer_budget)
        self.bytes_uploaded = 0

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
        return BackupSummary(
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
            self.parent.forget()
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

    def _takes(self, entry: SourceEntry) -> bool:
        """Whether this job backs up ``entry``: every one, unless it is one shard of a backup
        split across processes (``shards.py`` takes only its own paths)."""
        return True

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

    async def _learn_stored(self) -> None:
        """Decide which chunks this backup may take as stored without uploading them: the one
        place that decides it.

        With a parent: the chunks its MANIFEST names, and nothing is listed, so the requests of
        an incremental backup follow the change, not the size of the store. That is safe
        because the parent is a committed MANIFEST, prune removes only chunks that no committed
        MANIFEST names, and never while this job holds its shared lock (taken before the parent
        was read, held until the MANIFEST is written): see ``docs/design.md``.
        A chunk of a changed file that the parent does not name is uploaded: a PUT is
        idempotent, so a chunk already stored by another backup costs one request, no more.

        Without one (a first backup of this host and source, or ``--force``): one listing of
        ``chunks/``, so a first backup into a store that other backups use still dedups
        against everything there. ``docs/design.md`` gives the cost model and why a listing,
        not index objects.

        A parent damaged behind the protocol's back (a chunk deleted by hand) is not trusted
        blindly: a random sample of its chunks is checked first (``spot_check``); if one is
        missing, what is stored is learnt from a listing instead, and an unchanged file whose
        chunks the store lacks is read again (``_unchanged``), as restic does when a blob of
        the parent is not in its index.
        """
        missing: list[str] = []
        if self.parent is not None and self.parent.format_version >= PACKED_FORMAT_VERSION:
            try:
                self.parent.places = await self.repo.load_index(self.parent.name)
            except ManifestError as exc:
                log.warning("the parent's chunks are not trusted, listing the store: %s", exc)
                missing = ["INDEX"]
        if self.parent is not None and not missing:
            phase(self.progress, "checking the parent's chunks")
            missing = await spot_check(self.repo, self.parent)
            if missing:
                log.warning(
                    "%d of %d chunks of the parent %s checked are missing from the store (%s): "
                    "its chunks are not trusted; listing the store, and reading again every "
                    "file whose chunks are missing",
                    len(missing), len(self.parent.sample), self.parent.name, missing[0],
                )  # fmt: skip
        if self.parent is not None and not missing:
            refs: set[str] = self.parent.refs
            self.places = self.parent.places
            log.info("backup: %d chunks named by the parent %s", len(refs), self.parent.name)
        else:
            phase(self.progress, "listing the store")
            refs = await self.repo.stored_refs(on_page=self._listed)
            log.info("backup: %d chunks already in the store", len(refs))
            if self._packs_on:
                self.places = await packed_elsewhere(self.repo)
                refs |= self.places.places.keys()
            self.trusted = refs
        if not self._packs_on and self.places:  # it writes no INDEX: it may name chunk objects only
            refs = refs - self.places.places.keys()
            self.places = PackIndex()
            self.trusted = refs
        # A Python loop over every ref the parent names (100,000 and more): off the loop.
        self.stored = await to_thread(preferred_refs, refs, self.config.compression.codec)
        self.scheduled = set(self.stored)

    @property
    def _packs_on(self) -> bool:
        """Whether this job packs (and so may name packed chunks); with packs off
        (``--pack-threshold 0``) it stores and names chunk objects only, as before packs."""
        return self.packs and self.config.pack_threshold > 0

    def _pack_stored(self, pack: Pack) -> None:
        """A pack's upload is confirmed: each of its chunks is stored, at its place."""
        self.places.add_pack(pack.pack_id, len(pack.data), pack.chunks)
        for chunk in pack.chunks:
            self.stored[digest_of_ref(chunk.ref)] = chunk.ref
        self.uploaded += len(pack.chunks)
        self.bytes_uploaded += len(pack.data)
        self.metrics.chunks.labels(OPERATION, "transferred").inc(len(pack.chunks))
        self.metrics.bytes.labels(OPERATION, "transferred").inc(len(pack.data))

    def _listed(self, chunks: int) -> None:
        phase(self.progress, "listing the store", f"{chunks} chunks")

    def _now(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    def _take(self, entry: SourceEntry) -> FileEntry | None:
        """The final entry of a directory, a symlink, or a file unchanged since the parent;
        None for what the loop must handle (files to read, hard links, special files). Runs in
        the walk's worker thread, so an unchanged file costs the event loop nothing of its own:
        it reads only the parent (not changed while the walk runs) and the job's settings."""
        if not self._takes(entry):
            return None  # another shard's: the loop leaves it out
        st = entry.stat
        if entry.kind == "file":
            if self.parent is None or st.st_nlink > 1:  # hard links: ``self.links``, on the loop
                return None
            xattrs = xattrs_or_warn(entry.reachable) if self.options.xattrs else ()
            return self.parent.reusable(entry.path, st, xattrs=xattrs, trusted=self.trusted)
        if entry.kind not in ("dir", "symlink"):
            return None
        return FileEntry(
            entry.path,
            "dir" if entry.kind == "dir" else "symlink",
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns,
            target=entry.target or "",
            uid=st.st_uid,
            gid=st.st_gid,
            xattrs=xattrs_or_warn(entry.reachable) if self.options.xattrs else (),
        )

    def _took(self, taken: list[FileEntry]) -> None:
        """Count what the walk's thread took whole: one update per batch, not per file."""
        if not taken:
            return
        self.ready += taken
        unchanged = sum(e.type == "file" for e in taken)
        if unchanged:
            self.unchanged += unchanged
            self.progress.advance(files=unchanged)
            self.metrics.files.labels(OPERATION, "unchanged").inc(unchanged)
            if log.isEnabledFor(logging.DEBUG):
                for e in taken:
                    if e.type == "file":
                        log.debug("unchanged %s (%d bytes, not read)", e.path, e.size)

    async def _add(self, pool: TaskPool, entry: SourceEntry) -> None:
        st = entry.stat
        mode = stat.S_IMODE(st.st_mode)
        if entry.kind in ("dir", "symlink"):
            xattrs = await xattrs_of(entry.reachable, wanted=self.options.xattrs)
            kind: EntryType = "dir" if entry.kind == "dir" else "symlink"
            self.entries.append(
                FileEntry(
                    entry.path,
                    kind,
                    mode,
                    st.st_mtime_ns,
                    target=entry.target or "",
                    uid=st.st_uid,
                    gid=st.st_gid,
                    xattrs=xattrs,
                )
            )
        elif entry.kind == "file" and self.links.claim(entry.path, st):
            pass  # another name of a file read under its first name: recorded as a hard link
        elif entry.kind == "file" and (unchanged := await self._unchanged(entry)):
            self.entries.append(unchanged)
            self.unchanged += 1
            log.debug("unchanged %s (%d bytes, not read)", entry.path, unchanged.size)
            self.progress.advance(files=1)
            self.metrics.files.labels(OPERATION, "unchanged").inc()
        elif entry.kind == "file" and st.st_size <= self.config.chunk_size:
            # A small file is one task that reads and uploads it, so many are read at once.
            upload_here = partial(self.upload, entry.path)
            await pool.spawn(entry.path, partial(self._add_file, entry, upload_here))
        elif entry.kind == "file":
            # A large file is read here, chunk by chunk; its chunks are uploaded in parallel.
            async def upload_in_pool(digest: str, data: bytes, label: str, held: int) -> None:
                upload = partial(self.upload, entry.path, digest, data, label, held)
                try:
                    await pool.spawn(entry.path, upload)
                except BaseException:
                    self.buffers.release(held)  # the task never started: nobody else will
                    raise

            try:
                await self._add_file(entry, upload_in_pool)
            except SourceError as exc:
                pool.record(entry.path, exc)
                raise
        else:
            self.skipped += 1
            self.metrics.files.labels(OPERATION, "skipped").inc()
            log.warning("skipped %s: not a regular file, directory or symlink", entry.path)

    async def _unchanged(self, entry: SourceEntry) -> FileEntry | None:
        """This file's entry taken from the parent, if it is unchanged since: its content is
        not read (its extended attributes are, if asked for, as for any file)."""
        if self.parent is None:
            return None
        old = self.parent.unchanged(entry.path, entry.stat)
        if old is None:
            return None
        mode = stat.S_IMODE(entry.stat.st_mode)
        new = entry_from_parent(old, entry.stat, mode, chunks=digests(old.chunks))
        if not all(d in self.scheduled for d in new.chunks):
            return None  # a chunk of it is not in the store (the parent is damaged): read it
        if self.options.xattrs:
            new = msgspec.structs.replace(new, xattrs=await xattrs_of(entry.reachable, wanted=True))
        return new

    async def _add_file(self, entry: SourceEntry, upload: Upload) -> None:
        """Read, hash and upload one file; a file that changes while it is read (a log being
        written) is read again, up to ``READS_OF_A_CHANGING_FILE`` times in all. Unless
        ``strict``, the last read is stored as read, and a file that vanished or cannot be read
        is skipped; each with a warning the MANIFEST records.

        Raises:
            SourceError: with ``strict`` only: the file cannot be read, or it changed during
                every read.
        """
        strict = self.options.strict
        for read in range(1, READS_OF_A_CHANGING_FILE + 1):
            last = read == READS_OF_A_CHANGING_FILE
            try:
                return await self._read_file(entry, upload, accept_changes=last and not strict)
            except SourceChangedError as exc:
                if last:
                    raise SourceChangedError(
                        f"{exc}; it changed during each of {read} reads: back it up again "
                        "once it is quiet"
                    ) from exc
                # The chunks of the torn read that went up are harmless: named by nothing,
                # prune removes them.
                log.warning(
                    "%s; reading it again (%d of %d)", exc, read + 1, READS_OF_A_CHANGING_FILE
                )
            except SourceError as exc:
                if strict:
                    raise
                kind: WarningKind = (
                    "vanished" if isinstance(exc, SourceVanishedError) else "unreadable"
                )
                self._warn(SourceWarning(entry.path, kind, f"{exc}; skipped"))
                self.metrics.files.labels(OPERATION, "skipped").inc()
                return

    def _unlistable(self, relative: str, error: SourceError) -> None:
        """A directory that cannot be listed: recorded empty, with a warning (or, with
        ``strict``, the end of the backup)."""
        if self.options.strict:
            raise error
        kind: WarningKind = "vanished" if isinstance(error, SourceVanishedError) else "unreadable"
        self._warn(SourceWarning(relative, kind, f"{error}; what it holds is skipped"))

    def _warn(self, warning: SourceWarning) -> None:
        log.warning("%s", warning.message)
        self.warnings.append(warning)

    async def _read_file(
        self, entry: SourceEntry, upload: Upload, *, accept_changes: bool = False
    ) -> None:
        reader = ChunkReader(
            entry.shown,
            self.config.chunk_size,
            accept_changes=accept_changes,
            opener=entry.open,
            batch=self._reads,
        )
        chunks: list[str] = []
        # A compressed chunk's upload holds its encoded copy as well (never larger).
        copies = 1 if self.config.compression.codec == "none" else 2
        try:
            while True:
                # Read-ahead is bounded in bytes: the chunk's buffer is paid for before it is
                # filled, and given back once it is uploaded (or found already stored).
                expected = min(self.config.chunk_size, max(0, entry.stat.st_size - reader.size))
                held = await self.buffers.acquire(expected * copies)
                try:
                    chunk = await reader.next_chunk()
                except BaseException:
                    self.buffers.release(held)
                    raise
                if chunk is None:
                    self.buffers.release(held)
                    break
                data, digest = chunk
                held = self._resize(held, len(data) * copies)
                chunks.append(digest)
                self.bytes_read += len(data)
                self.progress.advance(nbytes=len(data))
                if digest in self.scheduled:
                    self.buffers.release(held)
                    self.metrics.chunks.labels(OPERATION, "skipped").inc()
                    self.metrics.bytes.labels(OPERATION, "skipped").inc(len(data))
                    continue
                self.scheduled.add(digest)
                await upload(digest, data, f"chunk {len(chunks)} {digest[:12]}", held)
        finally:
            await reader.aclose()
        assert reader.stat is not None
        if reader.changed:
            self._warn(
                SourceWarning(
                    entry.path,
                    "changed",
                    f"{reader.changed}, during each of {READS_OF_A_CHANGING_FILE} reads: "
                    f"stored as last read ({reader.size} bytes), which may not be a consistent "
                    "copy",
                )
            )
        self.entries.append(
            FileEntry(
                entry.path,
                "file",
                stat.S_IMODE(reader.stat.st_mode),
                reader.stat.st_mtime_ns,
                size=reader.size,
                sha256=reader.sha256,
                chunks=tuple(chunks),
                ctime_ns=reader.stat.st_ctime_ns,
                inode=reader.stat.st_ino,
                uid=reader.stat.st_uid,
                gid=reader.stat.st_gid,
                xattrs=await xattrs_of(entry.reachable, wanted=self.options.xattrs),
            )
        )
        self.progress.advance(files=1)
        self.metrics.files.labels(OPERATION, "done").inc()  # counted as it goes, for a scrape
        log.debug("stored %s (%d bytes, %d chunks)", entry.path, reader.size, len(chunks))

    def _resize(self, held: int, actual: int) -> int:
        """What a buffer holds of the budget, once its real length is known: a file that
        shrank gives back the rest; one that grew since it was listed takes the difference
        without waiting (it is in memory already)."""
        if actual < held:
            self.buffers.release(held - actual)
        elif actual > held:
            self.buffers.force(actual - held)
        return actual

    async def upload(self, path: str, digest: str, data: bytes, label: str, held: int = 0) -> None:
        """Store one chunk of ``path`` (encoded, if the config says so), retried; count it.
        ``held`` bytes of the buffer budget are given back at the end, however it ends."""
        try:
            compression = self.config.compression
            if compression.codec == "none":
                stored, ref, stored_sha256 = data, digest, digest
            else:  # each chunk on its own, in a worker thread: the loop never compresses
                stored, ref, stored_sha256 = await to_thread(
                    encode_chunk, data, digest, compression
                )
            if self.packer is not None and len(stored) < self.config.pack_threshold:
                await self.packer.add(ref, stored, len(data))  # counted once its pack is stored
                return
            await self.repo.put_chunk(
                ref, stored, data_sha256=stored_sha256, path=path, label=label
            )
        finally:
            if held:
                self.buffers.release(held)
        self.stored[digest] = ref
        self.uploaded += 1
        self.bytes_uploaded += len(stored)  # what went over the wire: compressed, if it was
        self.metrics.chunks.labels(OPERATION, "transferred").inc()
        self.metrics.bytes.labels(OPERATION, "transferred").inc(len(stored))


def _path_of(entry: FileEntry) -> str:
    return entry.path


def _with_refs(entry: FileEntry, stored: dict[str, str]) -> FileEntry:
    """``entry`` naming each chunk by its ref in the store (its digest, or with a codec's
    suffix), rebuilt only when one differs."""
    if not entry.chunks:
        return entry
    refs = tuple(stored[d] for d in entry.chunks)
    return entry if refs == entry.chunks else msgspec.structs.replace(entry, chunks=refs)
