"""The machinery every BackupEngine job shares: the engine's thread pool, a Repository with its
own retry budget per job, the repository lock a job takes, and the timing and metrics of a job.

``BackupEngine`` (engine.py) is built from ``EngineBase`` and the job groups on top of it:
``BackupMethods`` (engine_backup.py) and ``RestoreMethods`` (engine_restore.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from asyncbackup.backup_state import Clock
from asyncbackup.bandwidth import Bandwidth
from asyncbackup.config import EngineConfig
from asyncbackup.errors import BackupFailed
from asyncbackup.locks import LockKind, LockSettings, RepositoryLock
from asyncbackup.metrics import Metrics
from asyncbackup.progress import Progress
from asyncbackup.repository import Repository
from asyncbackup.retry import Retrier, Sleep
from asyncbackup.storage.base import Storage
from asyncbackup.threads import using

E = TypeVar("E", bound="EngineBase")
T = TypeVar("T")
P = ParamSpec("P")


def on_own_threads(
    method: Callable[Concatenate[E, P], Awaitable[T]],
) -> Callable[Concatenate[E, P], Coroutine[Any, Any, T]]:
    """Run an engine method with its thread calls on the engine's pool (see ``threads.py``)."""

    async def run(self: E, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._thread_pool() as pool, using(pool):
            return await method(self, *args, **kwargs)

    functools.update_wrapper(run, method)  # its name and docstring, for help() and the docs
    return run


class EngineBase:
    """What the engine's jobs share; its attributes are set by ``BackupEngine.__init__``."""

    store: Storage
    config: EngineConfig
    metrics: Metrics
    progress: Progress
    locking: LockSettings
    _executor: Executor | None
    _sleep: Sleep
    _bandwidth: Bandwidth | None
    _clock: Clock
    _lock_sleep: Sleep

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
