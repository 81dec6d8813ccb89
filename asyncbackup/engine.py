"""BackupEngine: the public face of asyncbackup: backup, restore, verify, list, delete, prune."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from asyncbackup.backup_state import Clock, utc_clock
from asyncbackup.bandwidth import Bandwidth
from asyncbackup.catalog import BackupInfo, Filters, read_catalog
from asyncbackup.config import EngineConfig
from asyncbackup.diff import BackupDiff, diff
from asyncbackup.engine_backup import BackupMethods
from asyncbackup.engine_base import EngineBase, on_own_threads
from asyncbackup.engine_restore import RestoreMethods
from asyncbackup.errors import ConfigError
from asyncbackup.layout import check_backup_name
from asyncbackup.locks import EXCLUSIVE, SHARED, LockSettings
from asyncbackup.manifest import Manifest
from asyncbackup.metrics import Metrics
from asyncbackup.packuse import RepackPolicy
from asyncbackup.progress import NoProgress, Progress
from asyncbackup.prune import DEFAULT_GRACE, PruneJob, PruneReport
from asyncbackup.retention import RetentionPolicy
from asyncbackup.retry import Sleep
from asyncbackup.storage.base import Storage
from asyncbackup.threads import to_thread
from asyncbackup.unlock import UnlockReport, unlock
from asyncbackup.verify import VerifyJob, VerifyReport

log = logging.getLogger("asyncbackup")


class BackupEngine(BackupMethods, RestoreMethods, EngineBase):
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

    @on_own_threads
    async def manifest(self, name: str) -> Manifest:
        """Backup ``name``'s MANIFEST.

        Raises:
            ManifestError: no such backup, or its MANIFEST is corrupt or unsafe.
        """
        return await self._repository("verify").load_manifest(check_backup_name(name))

    @on_own_threads
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

    @on_own_threads
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

    @on_own_threads
    async def list_backups(self, filters: Filters | None = None) -> list[BackupInfo]:
        """Every committed backup that ``filters`` lets through, by finish time, oldest first,
        from each MANIFEST's head alone (one small range request per backup). A backup whose
        MANIFEST cannot be read (too large, corrupt, unsafe) is listed with its ``problem``,
        whatever the filters."""
        infos = await read_catalog(self._repository("list"), concurrency=self.config.concurrency)
        chosen = filters if filters is not None else Filters()
        return [i for i in infos if i.problem or chosen.match(i)]

    @on_own_threads
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

    @on_own_threads
    async def unlock(self, *, force: bool = False) -> UnlockReport:
        """Remove the store's stale locks (of jobs killed, or not refreshed for the stale
        period); with ``force``, every lock, each live one with a WARNING."""
        return await unlock(
            self._repository("unlock"),
            force=force,
            settings=self.locking,
            clock=lambda: self._clock().timestamp(),
        )

    @on_own_threads
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


__all__ = ["BackupEngine", "BackupInfo", "Filters", "VerifyReport"]
