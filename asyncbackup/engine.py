"""BackupEngine: the public face of asyncbackup: backup, restore, verify, list, delete, prune."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from asyncbackup import restore_shards
from asyncbackup.backup import BackupJob, BackupSummary, Clock, default_name, utc_clock
from asyncbackup.backup_options import BackupOptions
from asyncbackup.bandwidth import Bandwidth
from asyncbackup.cat import Write, find_file, write_file
from asyncbackup.catalog import BackupInfo, Filters, read_catalog
from asyncbackup.commit import CommitJob, CommitSummary
from asyncbackup.config import EngineConfig
from asyncbackup.diff import BackupDiff, diff
from asyncbackup.errors import (
    BackupFailed,
    ConfigError,
    FailedItem,
    ManifestError,
)
from asyncbackup.layout import check_backup_name
from asyncbackup.locks import (
    EXCLUSIVE,
    SHARED,
    LockKind,
    LockSettings,
    RepositoryLock,
)
from asyncbackup.manifest import Manifest
from asyncbackup.metrics import Metrics
from asyncbackup.packuse import RepackPolicy
from asyncbackup.patterns import Patterns, select
from asyncbackup.progress import NoProgress, Progress, expect
from asyncbackup.prune import DEFAULT_GRACE, PruneJob, PruneReport
from asyncbackup.repository import Repository
from asyncbackup.restore import RestoreJob, RestoreSummary
from asyncbackup.retention import RetentionPolicy
from asyncbackup.retry import Retrier, Sleep
from asyncbackup.shards import ShardJob, ShardSpec, ShardSummary
from asyncbackup.storage.base import Storage
from asyncbackup.stream import DEFAULT_STREAM_MODE, StreamSource
from asyncbackup.threads import to_thread, using
from asyncbackup.unlock import UnlockReport, unlock
from asyncbackup.verify import VerifyJob, VerifyReport

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger("asyncbackup")


def _on_own_threads(
    method: Callable[Concatenate[BackupEngine, P], Awaitable[T]],
) -> Callable[Concatenate[BackupEngine, P], Coroutine[Any, Any, T]]:
    """Run an engine method with its thread calls on the engine's pool (see ``threads.py``)."""

    async def run(self: BackupEngine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._thread_pool() as pool, using(pool):
            return await method(self, *args, **kwargs)

    functools.update_wrapper(run, method)  # its name and docstring, for help() and the docs
    return run


class BackupEngine:
    """Backs up directories into a store and restores them.

    No global state: each engine has its own metrics (on ``metrics.registry``) and each job its own
    retry budget. Every method may be cancelled: the transfers stop and nothing is committed.
    ``sleep`` is the retry sleep, injectable so tests of retries take milliseconds; ``clock`` gives
    a backup's started and finished times (and prune's "now"), injectable so tests of retention
    can make backups days apart in a second; it also stamps the repository locks. ``bandwidth``
    caps the rate of chunk uploads and downloads; one ``Bandwidth`` may be shared by engines.
    ``locking`` says how long a job waits for the repository lock and how often it refreshes it;
    ``lock_sleep`` is the lock's own sleep (its back-off and refresh interval), injectable so
    tests can order a backup and a prune step by step.

    File reads and writes, hashing, compression and MANIFEST parsing run in worker threads:
    on ``executor`` if given (the caller owns it and shuts it down), else on a pool of
    ``concurrency + 4`` threads named ``asyncbackup_*`` that each call makes and shuts down.
    Never on the loop's default executor, so a service's own ``asyncio.to_thread`` calls do
    not queue behind a backup.
    """

    def __init__(
        self,
        store: Storage,
        config: EngineConfig | None = None,
        *,
        metrics: Metrics | None = None,
        progress: Progress | None = None,
        sleep: Sleep = asyncio.sleep,
        bandwidth: Bandwidth | None = None,
        clock: Clock = utc_clock,
        executor: Executor | None = None,
        locking: LockSettings | None = None,
        lock_sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.store = store
        self._executor = executor
        self.config = config if config is not None else EngineConfig()
        limit = store.max_connections
        if limit is not None and limit < self.config.concurrency:
            raise ConfigError(
                f"{store.url}: the store has {limit} connections, fewer than concurrency "
                f"{self.config.concurrency}; open it with StoreOptions(max_connections="
                f"{self.config.concurrency}) or lower the concurrency"
            )
        self.metrics = metrics if metrics is not None else Metrics()
        self.progress: Progress = progress if progress is not None else NoProgress()
        self._sleep = sleep
        self._bandwidth = bandwidth
        self._clock = clock
        self.locking = locking if locking is not None else LockSettings()
        self._lock_sleep = lock_sleep

    @contextmanager
    def _thread_pool(self) -> Iterator[Executor]:
        if self._executor is not None:
            yield self._executor
            return
        pool = ThreadPoolExecutor(self.config.concurrency + 4, thread_name_prefix="asyncbackup")
        try:
            yield pool
        finally:
            # Every call of this job has returned (``settled`` ones waited for): drop the
            # threads without blocking the loop; queued reads of a cancelled job never start.
            pool.shutdown(wait=False, cancel_futures=True)

    def _repository(self, operation: str) -> Repository:
        self.metrics.start(operation)
        retrier = Retrier(
            self.config.retry,
            concurrency=self.config.concurrency,
            metrics=self.metrics,
            sleep=self._sleep,
            bandwidth=self._bandwidth,
        )
        return Repository(
            self.store,
            retrier,
            operation=operation,
            manifest_limit=self.config.max_manifest_size,
        )

    def lock(self, repo: Repository, kind: LockKind) -> RepositoryLock:
        """The repository lock a job on ``repo`` takes (``async with``): ``SHARED`` for a job
        that writes chunks and commits a MANIFEST, ``EXCLUSIVE`` for one that removes chunks.
        A job calls ``await lock.check()`` before its commit or each batch of deletes."""
        return RepositoryLock(
            repo,
            kind=kind,
            operation=repo.operation,
            settings=self.locking,
            clock=lambda: self._clock().timestamp(),
            sleep=self._lock_sleep,
        )

    @_on_own_threads
    async def backup(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        options: BackupOptions | None = None,
    ) -> BackupSummary:
        """Back up directory ``source`` as backup ``name`` (default: ``default_name()``). Files
        skipped or stored while changing are in the summary's ``warnings`` (see
        ``BackupOptions.strict``). Files unchanged since the parent backup (``options.parent``,
        by default the newest backup of this host and source) are not read: see
        ``asyncbackup/parent.py`` and ``BackupOptions.changes``.

        Raises:
            ConfigError: a bad name, a source that is not a directory, a name already taken,
                or a parent that does not exist or cannot be read.
            NameTakenError: another job committed a backup of this name while this one ran.
            BackupFailed: the job gave up; no MANIFEST was written.
        """
        name = check_backup_name(name if name is not None else default_name())
        job = await self._backup_job(options)
        return await self._timed("backup", job.run(Path(source), name))

    async def _backup_job(self, options: BackupOptions | None = None) -> BackupJob:
        """A backup job on this engine's store, under a shared repository lock."""
        repo = self._repository("backup")
        await self.store.mark_as_repository()
        return BackupJob(
            repo,
            self.config,
            self.metrics,
            self.progress,
            clock=self._clock,
            options=options,
            lock=self.lock(repo, SHARED),
        )

    @_on_own_threads
    async def backup_shard(
        self,
        source: str | Path,
        *,
        name: str,
        shard: ShardSpec,
        options: BackupOptions | None = None,
        worker: str = "",
    ) -> ShardSummary:
        """Back up shard ``shard`` of directory ``source`` for backup ``name`` and write its
        shard record; the backup exists once ``commit`` has merged every shard (see shards.py).
        ``worker`` names the Dask worker that runs it, for the record.

        Raises:
            ConfigError: as ``backup``.
            BackupFailed: the shard gave up; its record was not written (or not confirmed).
        """
        name = check_backup_name(name)
        repo = self._repository("backup")
        await self.store.mark_as_repository()
        job = ShardJob(
            repo, self.config, self.metrics, self.progress, clock=self._clock, options=options,
            lock=self.lock(repo, SHARED), shard=shard, worker=worker,
        )  # fmt: skip
        summary = await self._timed("backup", job.run(Path(source), name))
        record = f"{repo.store.url}/shards/{name}/{shard.index}.record"
        where = (socket.gethostname(), os.getpid())
        return ShardSummary(summary, shard, record, *where, worker=worker, rerun=job.rerun)

    @_on_own_threads
    async def commit(self, name: str, *, shards: int) -> CommitSummary:
        """Check the ``shards`` shard records of backup ``name``, write its MANIFEST, and remove
        the records (see commit.py).

        Raises:
            ConfigError: a bad name or count, or another backup of this name exists.
            BackupFailed: a record is missing, damaged or inconsistent, or a chunk it names is
                not stored; nothing was committed.
        """
        repo = self._repository("commit")
        job = CommitJob(
            repo,
            concurrency=self.config.concurrency,
            progress=self.progress,
            lock=self.lock(repo, SHARED),
        )
        return await self._timed("commit", job.run(check_backup_name(name), shards))

    @_on_own_threads
    async def backup_stream(
        self,
        chunks: AsyncIterable[bytes],
        *,
        filename: str,
        name: str | None = None,
        source: str = "stream",
        mode: int = DEFAULT_STREAM_MODE,
    ) -> BackupSummary:
        """Back up the bytes ``chunks`` yields (pieces of any size, in order) as one file named
        ``filename``, uploading chunks while the iterator still produces; ``source`` is what
        the MANIFEST records as where they came from. If the iterator raises, nothing is
        committed.

        Raises:
            ConfigError: a bad name or file name, or a name already taken.
            BackupFailed: the job gave up, or the iterator raised a ``BackupError``; no MANIFEST
                was written.
        """
        name = check_backup_name(name if name is not None else default_name())
        stream = StreamSource(chunks, filename, source, mode)
        job = await self._backup_job()
        return await self._timed("backup", job.run(stream, name))

    @_on_own_threads
    async def restore_file(self, name: str, path: str, write: Write) -> int:
        """Write file ``path`` of backup ``name`` to ``write``, in order, each chunk checked
        against its hash before it is written; the number of bytes written.

        Raises:
            ManifestError: no such backup or file, or the MANIFEST is corrupt or unsafe.
            ConfigError: ``path`` is a directory or a link.
            IntegrityError: a chunk or the whole file does not match its hash.
            BackupFailed: the store failed.
        """
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        entry = find_file(manifest, path)
        # Chunks fetched ahead of the writes, within the byte budget (at least one).
        ahead = max(
            1, min(self.config.concurrency, self.config.buffer_budget // manifest.chunk_size)
        )
        expect(self.progress, files=1, nbytes=entry.size)

        async def write_and_count(data: bytes) -> None:
            await write(data)
            self.progress.advance(nbytes=len(data))

        job = write_file(repo, manifest, entry, write_and_count, ahead=ahead)
        written = await self._timed("restore", job)
        self.progress.advance(files=1)
        return written

    @_on_own_threads
    async def restore(
        self,
        name: str,
        target: str | Path,
        *,
        overwrite: bool = False,
        delete: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> RestoreSummary:
        """Restore backup ``name`` into directory ``target``; with ``include`` or ``exclude``
        (gitignore patterns), only the entries they select and the directories above them.
        With ``overwrite``, into a non-empty directory: files already there with the backup's
        size and sha256 are kept (not fetched), others replaced, and entries the backup does
        not have are left alone; ``delete`` removes those too (it implies ``overwrite``, and
        cannot be combined with patterns). See docs/restore.md.

        Raises:
            ConfigError: the target is not empty (and ``overwrite`` is False) or is a file; a
                pattern is invalid, or the patterns select nothing; ``delete`` with patterns.
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
            TargetError: the target cannot be written (a full disk, a permission).
            BackupFailed: a chunk was missing or corrupt, or the store failed.
        """
        if delete and (include or exclude):
            raise ConfigError(
                "--delete removes what the backup does not have, and with --include or "
                "--exclude that would be everything left out: use one or the other"
            )
        wanted = Patterns(include, what="--include pattern")
        unwanted = Patterns(exclude, what="--exclude pattern")
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        if wanted or unwanted:
            manifest = await to_thread(select, manifest, include=wanted, exclude=unwanted)
        job = RestoreJob(repo, self.config, self.metrics, self.progress)
        expect(self.progress, files=manifest.totals.files, nbytes=manifest.totals.bytes)
        run = job.run(manifest, Path(target), overwrite=overwrite, delete=delete)
        return await self._timed("restore", run)

    @_on_own_threads
    async def restore_shard(
        self, name: str, target: str | Path, *, shard: ShardSpec | None
    ) -> RestoreSummary:
        """Restore shard ``shard``'s files of backup ``name`` into ``target``, beside the other
        shards (as ``overwrite`` does); with ``shard`` None, the last step once every shard is
        done: leftovers, empty directories, symlinks, directory modes and mtimes, after a
        check that every file is in place (see restore_shards.py).

        Raises:
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
            BackupFailed: a chunk was missing or corrupt, or (the last step) a file is missing
                from the target: a shard did not finish.
        """
        repo = self._repository("restore")
        manifest = await repo.load_manifest(check_backup_name(name))
        job = RestoreJob(repo, self.config, self.metrics, self.progress)
        if shard is not None:
            part = await to_thread(restore_shards.part_of, manifest, shard)
            expect(self.progress, files=part.totals.files, nbytes=part.totals.bytes)
            run = job.run(part, Path(target), overwrite=True, sweep_leftovers=False)
            return replace(await self._timed("restore", run), name=f"{name} (shard {shard})")
        missing = await to_thread(restore_shards.missing_files, manifest, Path(target))
        if missing:
            error = ManifestError(
                f"{len(missing)} files of backup {name} are not in {target} (the first: "
                f"{missing[0]!r}): a shard did not finish; run it again, then this step"
            )
            raise BackupFailed("restore", [FailedItem("", error)], outcome="nothing was changed")
        rest = await to_thread(restore_shards.last_step_of, manifest)
        summary = await self._timed("restore", job.run(rest, Path(target), overwrite=True))
        totals = manifest.totals
        return replace(summary, files=totals.files, bytes=totals.bytes)

    @_on_own_threads
    async def manifest(self, name: str) -> Manifest:
        """Backup ``name``'s MANIFEST.

        Raises:
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
        """
        return await self._repository("verify").load_manifest(check_backup_name(name))

    @_on_own_threads
    async def diff(self, old: str, new: str) -> BackupDiff:
        """What was added, removed and changed from backup ``old`` to backup ``new``, from
        their MANIFESTs alone.

        Raises:
            ManifestError: either backup is missing, or its MANIFEST is corrupt or unsafe.
        """
        repo = self._repository("verify")
        before = await repo.load_manifest(check_backup_name(old))
        after = await repo.load_manifest(check_backup_name(new))
        return await to_thread(diff, before, after)

    @_on_own_threads
    async def verify(self, name: str | None = None, *, deep: bool = False) -> VerifyReport:
        """Check that every chunk of backup ``name`` (of every backup, when None) is in the
        store (one listing); with ``deep``, download each chunk once, check its hash, and check
        each file's whole size and sha256 from its chunks, as a restore would (see verify.py).

        Raises:
            ManifestError: ``name`` is given and there is no such backup, or its MANIFEST is
                corrupt, unsafe or too large (with no name, such a backup is reported instead).
            BackupFailed: the store failed (not: a chunk is missing or corrupt, which is reported).
        """
        job = VerifyJob(self._repository("verify"), self.config, self.progress)
        return await job.run(None if name is None else check_backup_name(name), deep=deep)

    @_on_own_threads
    async def list_backups(self, filters: Filters | None = None) -> list[BackupInfo]:
        """Every committed backup that ``filters`` lets through, by finish time, oldest first,
        from each MANIFEST's head alone (one small range request per backup). A backup whose
        MANIFEST cannot be read (too large, corrupt, unsafe) is listed with its ``problem``,
        whatever the filters."""
        infos = await read_catalog(self._repository("list"), concurrency=self.config.concurrency)
        chosen = filters if filters is not None else Filters()
        return [i for i in infos if i.problem or chosen.match(i)]

    @_on_own_threads
    async def delete(self, name: str) -> None:
        """Delete backup ``name``'s MANIFEST. Its chunks stay until a prune removes unused ones.

        It takes a shared lock: it removes no chunk, so it may run beside backups, but it waits
        for a running prune, whose report of what it kept and removed then stays exact.

        Raises:
            ManifestError: there is no such backup.
            LockError: a prune held the lock for longer than the lock wait.
        """
        repo = self._repository("delete")
        async with self.lock(repo, SHARED):
            await repo.delete_manifest(check_backup_name(name))

    @_on_own_threads
    async def unlock(self, *, force: bool = False) -> UnlockReport:
        """Remove the store's stale locks (of jobs killed, or not refreshed for the stale
        period); with ``force``, every lock, each live one with a WARNING."""
        return await unlock(
            self._repository("unlock"),
            force=force,
            settings=self.locking,
            clock=lambda: self._clock().timestamp(),
        )

    @_on_own_threads
    async def prune(
        self,
        policy: RetentionPolicy,
        *,
        grace: float = DEFAULT_GRACE,
        dry_run: bool = False,
        repack: RepackPolicy | None = None,
    ) -> PruneReport:
        """Remove the backups ``policy`` lets go, then every chunk and pack no remaining backup
        names and that is older than ``grace`` seconds, and repack the packs ``repack`` finds
        too wasteful (see ``asyncbackup/prune.py`` for why it is safe beside a running backup:
        it holds the exclusive lock; ``asyncbackup/repack.py`` for why a repack never leaves an
        INDEX naming a missing pack). With ``dry_run``, delete nothing, take no lock, and report.

        Raises:
            ConfigError: ``grace`` is negative.
            ManifestError: a MANIFEST cannot be read: prune stops rather than guess.
            LockError: a backup or another prune held the lock for longer than the lock wait.
            BackupFailed: the store failed.
        """
        if grace < 0:
            raise ConfigError(f"the grace period must not be negative, not {grace} s")
        repo = self._repository("prune")
        job = PruneJob(
            repo,
            self.config,
            policy=policy,
            grace=grace,
            dry_run=dry_run,
            clock=self._clock,
            lock=self.lock(repo, EXCLUSIVE),
            repack=repack,
        )
        report = await self._timed("prune", job.run())
        if not dry_run:
            self._count_pruned(report)
        return report

    def _count_pruned(self, report: PruneReport) -> None:
        objects = self.metrics.pruned
        for kind, outcome, n in (
            ("backup", "deleted", len(report.removed)),
            ("chunk", "deleted", report.chunks_deleted),
            ("pack", "deleted", report.packs_deleted),
            ("pack", "repacked", report.packs_repacked),
            ("pack", "written", report.packs_written),
        ):
            objects.labels("prune", kind, outcome).inc(n)
        freed = report.bytes_freed + report.bytes_freed_by_packs
        self.metrics.pruned_bytes.labels("prune", "freed").inc(freed)
        self.metrics.pruned_bytes.labels("prune", "copied").inc(report.bytes_written)

    async def _timed(self, operation: str, job: Awaitable[T]) -> T:
        started = time.monotonic()
        try:
            result = await job
        except BackupFailed as exc:
            self.metrics.files.labels(operation, "failed").inc(len(exc.failures))
            raise
        finally:
            self.metrics.duration.labels(operation).set(time.monotonic() - started)
        self.metrics.last_success.labels(operation).set_to_current_time()
        return result


__all__ = ["BackupEngine", "BackupInfo", "Filters", "VerifyReport"]
