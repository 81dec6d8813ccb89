"""The engine's jobs that write a backup: a directory, one shard of one, a stream, and the commit
of a sharded backup."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterable
from pathlib import Path

from asyncbackup.backup import BackupJob, BackupSummary, default_name
from asyncbackup.backup_options import BackupOptions
from asyncbackup.commit import CommitJob, CommitSummary
from asyncbackup.engine_base import EngineBase, on_own_threads
from asyncbackup.layout import check_backup_name
from asyncbackup.locks import SHARED
from asyncbackup.shards import ShardJob, ShardSpec, ShardSummary
from asyncbackup.stream import DEFAULT_STREAM_MODE, StreamSource


class BackupMethods(EngineBase):
    """``BackupEngine``'s backup, backup_shard, backup_stream and commit."""

    @on_own_threads
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

    @on_own_threads
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

    @on_own_threads
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

    @on_own_threads
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
