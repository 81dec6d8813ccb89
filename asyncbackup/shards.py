"""One backup made by many processes: which shard takes which path, and one shard's job.

**The split.** Every entry of the source (file, directory, link, the root itself) belongs to
exactly one of ``N`` shards: ``shard_of(path, N)``, from the sha256 of its relative path. Each
shard walks the whole tree (``lstat`` only: no file is opened but its own) and takes the entries
that are its own, so no shard needs a listing from another, and nothing coordinates them but
the store.

Why a hash of the path rather than DistCp's split of one listing into ranges of equal bytes:
DistCp writes its listing once, before the map tasks start, and every task reads it. Here each
shard lists on its own, perhaps minutes apart, while the tree may change; a range split of
bytes would move its boundaries when one file grew, and a path near a boundary would then be
taken by two shards, or by none, silently. A path's shard depends on nothing but the path and
``N``: a tree that changes between two shards' walks can neither lose a path nor back it up
twice. The price is balance by count, not bytes: with many files the bytes even out (the law
of large numbers); with a few very large ones they do not. On Dask, more shards than workers
(``--shards`` several times the workers) balance it dynamically as DistCp's
``DynamicInputFormat`` does: a worker that finishes early takes the next shard.

**Hard links** across shards: each shard keeps the hard links among its own paths; two names
of one file taken by different shards restore as two files of the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncbackup.backup import OPERATION, BackupJob, BackupSummary
from asyncbackup.backup_options import BackupOptions
from asyncbackup.config import EngineConfig
from asyncbackup.errors import BackupFailed, ConfigError, FailedItem, StorageError
from asyncbackup.layout import digest_of_ref, shard_key
from asyncbackup.manifest import Manifest
from asyncbackup.packs import Pack, PackIndex
from asyncbackup.pool import TaskPool
from asyncbackup.progress import phase
from asyncbackup.shard_packs import PacksOfShard
from asyncbackup.shard_records import encode_record
from asyncbackup.stream import StreamSource
from asyncbackup.threads import to_thread
from asyncbackup.walk import SourceEntry

SHARDED_HOST = "(shards)"
"""The host a sharded backup records: it was made by many hosts (Kubernetes pods get new names
on every run), and each shard looks for its parent among the backups of this host and the same
source, so an incremental sharded backup finds the previous sharded one."""
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "AWS_BATCH_JOB_ARRAY_INDEX")
"""Where schedulers put the index of one task of an array (``--shard-index-env``)."""
MAX_SHARDS = 10_000


def shard_of(path: str, count: int) -> int:
    """The shard (0 to ``count - 1``) that backs up the entry at relative path ``path``."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count``.

    Raises:
        ConfigError: ``count`` is not between 1 and ``MAX_SHARDS``, or ``index`` not between 0
            and ``count - 1``.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"the number of shards must be 1 to {MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index {self.index} is out of range for {self.count} shards: shards are "
                f"numbered 0 to {self.count - 1}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """``K/N`` as ``--shard`` takes it.

        Raises:
            ConfigError: not two integers separated by '/', or out of range.
        """
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ConfigError(
                f"--shard {text!r}: give K/N, shard K (counted from 0) of N, such as 0/4"
            )
        return cls(int(index), int(count))

    def takes(self, path: str) -> bool:
        return shard_of(path, self.count) == self.index


def index_from_environment(variable: str, count: int, environ: Mapping[str, str]) -> ShardSpec:
    """Shard ``$variable`` of ``count``: the index a scheduler gives each task of an array
    (``JOB_COMPLETION_INDEX`` in a Kubernetes Indexed Job, ``SLURM_ARRAY_TASK_ID``,
    ``AWS_BATCH_JOB_ARRAY_INDEX``, or any variable).

    Raises:
        ConfigError: the variable is not set, is not an integer, or is out of range.
    """
    value = environ.get(variable)
    if value is None:
        known = ", ".join(INDEX_VARIABLES)
        raise ConfigError(
            f"--shard-index-env {variable}: the variable is not set in this process; it is set "
            f"by the scheduler that runs each shard ({known}), or give --shard K/N"
        )
    if not value.strip().isdigit():
        raise ConfigError(f"--shard-index-env {variable}={value!r} is not a shard index")
    try:
        return ShardSpec(int(value), count)
    except ConfigError as exc:
        raise ConfigError(
            f"--shard-index-env {variable}={value}: {exc} (a Slurm array must count from 0: "
            f"--array=0-{count - 1})"
        ) from None


def shared_options(config: EngineConfig, options: BackupOptions) -> dict[str, Any]:
    """What every shard of one backup must have been run with; ``commit`` compares them."""
    excludes = options.excludes
    return {
        "chunk_size": config.chunk_size,
        "compression": config.compression.codec,
        "compression_level": config.compression.level,
        "strict": options.strict,
        "xattrs": options.xattrs,
        "tags": list(dict.fromkeys(options.tags)),
        "parent": options.parent,
        "force": options.changes.force,
        "ignore_inode": options.changes.ignore_inode,
        "ignore_ctime": options.changes.ignore_ctime,
        "exclude": list(excludes.patterns),
        "exclude_caches": excludes.exclude_caches,
        "exclude_if_present": list(excludes.exclude_if_present),
        "one_file_system": excludes.one_file_system,
    }


@dataclass(frozen=True)
class ShardSummary:
    """What one shard stored and recorded; the backup exists only once ``commit`` ran."""

    backup: BackupSummary  # its counts are this shard's own
    shard: ShardSpec
    record: str  # the record's key
    host: str
    pid: int
    worker: str
    rerun: bool  # an earlier attempt of this shard had started


class ShardJob(BackupJob):
    """Backs up the entries of one shard and writes its record instead of a MANIFEST.

    It takes part in the prune protocol like any backup: a shared lock from before its first
    read of the store until its record is written. A re-run (an earlier attempt left its start
    marker) lists ``chunks/`` even when it has a parent, so it reuses the chunk objects the
    attempt that died uploaded, and the packs it stored (``shard_packs.py``); its record
    replaces any earlier one.
    """

    def __init__(self, *args: Any, shard: ShardSpec, worker: str = "", **kwargs: Any) -> None:
        super().__init__(*args, host=SHARDED_HOST, **kwargs)
        self.shard = shard
        self.worker = worker
        self.name = ""
        self.rerun = False
        self.own_packs: PacksOfShard | None = None

    async def run(self, source: Path | StreamSource, name: str) -> BackupSummary:
        """Back up this shard's part of ``source``, for backup ``name``; see ``BackupJob.run``.

        Raises:
            ConfigError: the source is a stream, or as ``BackupJob.run``.
        """
        if isinstance(source, StreamSource):
            raise ConfigError("a backup from standard input cannot be split into shards")
        self.name = name
        return await super().run(source, name)

    def _takes(self, entry: SourceEntry) -> bool:
        return self.shard.takes(entry.path)

    async def _learn_stored(self) -> None:
        marker = shard_key(self.name, self.shard.index, started=True)
        self.rerun = marker in await self.repo.list_keys(marker)
        await self.repo.put_object(marker, self._marker(), action="mark shard started")
        await super()._learn_stored()
        self.own_packs = PacksOfShard(self.repo, self.name, self.shard.index)
        if self.rerun and self._packs_on:
            # Packs of the attempt that died, if a listing under this job's lock shows them.
            phase(self.progress, "reading what an earlier attempt stored")
            reused = await self.own_packs.reuse(concurrency=self.config.concurrency)
            for pack_id, size, chunks in reused:
                self.places.add_pack(pack_id, size, chunks)
                for chunk in chunks:
                    self.stored.setdefault(digest_of_ref(chunk.ref), chunk.ref)
            self.scheduled = set(self.stored)
        if self.rerun and self.parent is not None:
            # The attempt that died uploaded chunks no MANIFEST names: a listing finds them
            # (trusted under this job's shared lock, as a first backup trusts its listing).
            phase(self.progress, "listing the store")
            listed = await self.repo.stored_refs(on_page=self._listed)
            for ref in listed:
                digest = ref[:64]
                if digest not in self.stored:
                    self.stored[digest] = ref
            self.scheduled = set(self.stored)

    def _pack_stored(self, pack: Pack) -> None:
        super()._pack_stored(pack)
        if self.own_packs is not None:
            self.own_packs.stored(pack.pack_id)

    async def _add(self, pool: TaskPool, entry: SourceEntry) -> None:
        await super()._add(pool, entry)
        if self.own_packs is not None:
            await self.own_packs.note()  # a PUT only when a pack was stored since the last

    def _marker(self) -> bytes:
        where = {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.worker}
        return json.dumps(where).encode()

    async def _commit(self, manifest: Manifest, index: PackIndex, hint: Callable[[], str]) -> None:
        # The record carries the INDEX part: written now, after every pack it names is stored.
        key = shard_key(manifest.name, self.shard.index)
        data = await to_thread(
            encode_record,
            manifest,
            places=index,
            index=self.shard.index,
            count=self.shard.count,
            options=shared_options(self.config, self.options),
            worker=self.worker,
            written=manifest.finished,
        )
        phase(self.progress, "writing the shard record")
        if self.own_packs is not None:
            await self.own_packs.note()  # the last pack: a re-run finds it if the record fails
        await self.lock.check()  # its chunks are protected by the lock until the record is out
        try:
            await self.repo.put_object(key, data, action="write shard record", guarded=True)
        except StorageError as exc:
            raise BackupFailed(
                OPERATION,
                [FailedItem(key, exc)],
                hint="run the same shard again: the chunks it stored are reused",
                outcome="its shard record was not confirmed written",
            ) from exc
