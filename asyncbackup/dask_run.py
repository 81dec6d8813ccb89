"""Shards as tasks on an existing dask.distributed cluster: ``backup|restore ... --dask ADDRESS
--shards N``.

The client (the command) submits one task per shard; Dask places them on its workers, runs a
shard again elsewhere when its worker dies (and ``retries`` times when it fails), and the
client commits once every shard is done (a backup), or runs the last step as one more task (a
restore). Each task opens the store and runs one shard with the engine, in the worker's process,
on an event loop of its own; the workers must see the source (or target) at the same path. A
shard re-run reuses the chunks the dead attempt stored (``shards.py``). Progress: each task
reports files and bytes on a Dask event topic every half second, and the client adds them up
into its own bar or log lines.

``distributed`` is imported here only: an optional extra (``pip install asyncbackup[dask]``),
and nothing else pays its start-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncbackup.backup_options import BackupOptions
from asyncbackup.commit import CommitSummary
from asyncbackup.config import EngineConfig
from asyncbackup.errors import BackupError, BackupFailed, ConfigError, FailedItem
from asyncbackup.locks import LockSettings
from asyncbackup.progress import Progress
from asyncbackup.restore import RestoreSummary
from asyncbackup.shards import ShardSpec, ShardSummary
from asyncbackup.storage.base import Storage

log = logging.getLogger("asyncbackup")
Opener = Callable[[], Storage]
"""Opens the store in a worker: picklable (a module-level function with its arguments)."""
REPORT_EVERY = 0.5  # seconds between a task's progress events


@dataclass(frozen=True)
class ShardRun:
    """Where one shard ran and what it did."""

    index: int
    worker: str  # the Dask worker's address
    host: str
    pid: int
    files: int
    bytes: int
    chunks_uploaded: int
    seconds: float
    rerun: bool = False


@dataclass(frozen=True)
class ClusterSummary:
    """A backup or restore made by shards on a Dask cluster: each shard, then the end."""

    name: str
    operation: str  # backup or restore
    scheduler: str
    shards: tuple[ShardRun, ...]
    commit: CommitSummary | None = None  # a backup's
    finish: RestoreSummary | None = None  # a restore's last step
    seconds: float = 0.0

    @property
    def workers(self) -> set[str]:
        return {s.worker for s in self.shards}


class _EventProgress:
    """A task's progress, sent on a Dask event topic now and then (never blocks the loop:
    ``log_event`` from a task's thread only queues the message)."""

    def __init__(self, topic: str, shard: int) -> None:
        from distributed import get_worker

        self.worker = get_worker()
        self.topic = topic
        self.shard = shard
        self.files = self.bytes = 0
        self.sent = time.monotonic()

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        if time.monotonic() - self.sent >= REPORT_EVERY:
            self.flush()

    def flush(self) -> None:
        self.sent = time.monotonic()
        msg = {"shard": self.shard, "files": self.files, "bytes": self.bytes}
        self.worker.log_event(self.topic, msg)
        self.files = self.bytes = 0


def _backup_task(
    opener: Opener,
    config: EngineConfig,
    locking: LockSettings,
    options: BackupOptions,
    source: str,
    name: str,
    shard: ShardSpec,
    topic: str,
) -> ShardRun:
    """One shard of a backup, in a Dask worker."""
    from asyncbackup.engine import BackupEngine

    progress = _EventProgress(topic, shard.index)

    async def run() -> ShardSummary:
        async with opener() as store:
            engine = BackupEngine(store, config, progress=progress, locking=locking)
            return await engine.backup_shard(
                source, name=name, shard=shard, options=options, worker=progress.worker.address
            )

    summary = asyncio.run(run())
    progress.flush()
    b = summary.backup
    return ShardRun(shard.index, summary.worker, summary.host, summary.pid, b.files, b.bytes,
                    b.chunks_uploaded, b.seconds, summary.rerun)  # fmt: skip


def _restore_task(
    opener: Opener, config: EngineConfig, name: str, target: str, shard: ShardSpec | None,
    topic: str,
) -> tuple[ShardRun, RestoreSummary]:  # fmt: skip
    """One shard of a restore (or, with ``shard`` None, its last step), in a Dask worker."""
    from asyncbackup.engine import BackupEngine

    progress = _EventProgress(topic, shard.index if shard is not None else -1)

    async def run() -> RestoreSummary:
        async with opener() as store:
            engine = BackupEngine(store, config, progress=progress)
            return await engine.restore_shard(name, target, shard=shard)

    summary = asyncio.run(run())
    progress.flush()
    where = ShardRun(shard.index if shard is not None else -1, progress.worker.address,
                     socket.gethostname(), os.getpid(), summary.files, summary.bytes,
                     summary.chunks_downloaded, summary.seconds)  # fmt: skip
    return where, summary


async def backup_on_dask(
    address: str,
    *,
    count: int,
    retries: int,
    opener: Opener,
    config: EngineConfig,
    locking: LockSettings,
    options: BackupOptions,
    source: Path,
    name: str,
    progress: Progress,
    commit: Callable[[], Any],
    warm: Callable[[], Awaitable[object]] | None = None,
) -> ClusterSummary:
    """Back up ``source`` as ``count`` shards on the cluster at ``address``, then ``commit()``.

    Raises:
        ConfigError: ``distributed`` is not installed, or the scheduler cannot be reached.
        BackupFailed: a shard failed on every try (each named); nothing was committed.
    """
    started = time.monotonic()
    source = await asyncio.to_thread(source.absolute)
    # ``warm()``: the client's first request to the store (its SDK client and credentials,
    # about half a second) is made while the shards run, not at the start of the commit.
    warming = asyncio.create_task(_quietly(warm())) if warm is not None else None
    try:
        runs = await _run_shards(
            address, "backup", name, count, retries, progress,
            lambda shard, topic: (_backup_task, opener, config, locking, options, str(source),
                                  name, shard, topic),
        )  # fmt: skip
    finally:
        if warming is not None:
            warming.cancel()
            await asyncio.gather(warming, return_exceptions=True)
    summary: CommitSummary = await commit()
    return ClusterSummary(name, "backup", address, tuple(runs), commit=summary,
                          seconds=time.monotonic() - started)  # fmt: skip


async def _quietly(call: Awaitable[object]) -> None:
    """Await ``call``; a failure is left for the commit, which makes the same requests, to
    report."""
    try:
        await call
    except BackupError as exc:
        log.debug("warming the store up failed: %s", exc)


async def restore_on_dask(
    address: str,
    *,
    count: int,
    retries: int,
    opener: Opener,
    config: EngineConfig,
    name: str,
    target: Path,
    progress: Progress,
) -> ClusterSummary:
    """Restore backup ``name`` into ``target`` as ``count`` shards on the cluster at
    ``address``, then its last step as one more task.

    Raises:
        ConfigError: ``distributed`` is not installed, or the scheduler cannot be reached.
        BackupFailed: a shard failed on every try (each named).
    """
    started = time.monotonic()
    target = await asyncio.to_thread(target.absolute)
    results = await _run_shards(
        address, "restore", name, count, retries, progress,
        lambda shard, topic: (_restore_task, opener, config, name, str(target), shard, topic),
    )  # fmt: skip
    finished = await _run_shards(
        address, "restore", name, 1, retries, progress,
        lambda _, topic: (_restore_task, opener, config, name, str(target), None, topic),
    )  # fmt: skip
    runs = tuple(run for run, _ in results)
    return ClusterSummary(name, "restore", address, runs, finish=finished[0][1],
                          seconds=time.monotonic() - started)  # fmt: skip


async def _run_shards(
    address: str,
    operation: str,
    name: str,
    count: int,
    retries: int,
    progress: Progress,
    task: Callable[[ShardSpec, str], tuple[Any, ...]],
) -> list[Any]:
    """Submit one task per shard and wait for all; the results by shard.

    Raises:
        ConfigError: ``distributed`` is missing, or the scheduler cannot be reached.
        BackupFailed: some shards failed on every try; the others' results are discarded.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            "--dask needs the dask.distributed client: pip install 'asyncbackup[dask]'"
        ) from None
    topic = f"asyncbackup-{uuid.uuid4().hex[:12]}"

    def report(event: tuple[float, dict[str, int]]) -> None:
        msg = event[1]
        progress.advance(files=msg.get("files", 0), nbytes=msg.get("bytes", 0))

    try:
        client = await Client(address, asynchronous=True, timeout=10)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({exc}): check the address "
            "(tcp://HOST:8786) and that the scheduler runs"
        ) from exc
    failures: list[FailedItem] = []
    results: dict[int, Any] = {}
    async with client:
        client.subscribe_topic(topic, report)
        futures = {}
        for index in range(count):
            shard = ShardSpec(index, count)
            function, *args = task(shard, topic)
            key = f"asyncbackup-{operation}-{name}-{index}-of-{count}-{topic[-12:]}"
            futures[index] = client.submit(function, *args, key=key, pure=False, retries=retries)
        for index, future in futures.items():
            try:
                results[index] = await future
            except BackupError as exc:
                failures.append(FailedItem(f"shard {index}/{count}", exc))
            except Exception as exc:  # KilledWorker, a lost scheduler: Dask's own errors
                error = BackupError(f"{type(exc).__name__}: {exc}")
                failures.append(FailedItem(f"shard {index}/{count}", error))
        client.unsubscribe_topic(topic)  # each shard's summary has its totals: no waiting
    if failures:
        raise BackupFailed(
            operation,
            failures,
            hint="run the same command again: the shards that finished are re-run, reusing "
            "every chunk stored",
        )
    return [results[i] for i in range(count)]
