"""A bounded set of tasks where the first failure cancels the rest and names every failed file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from asyncbackup.errors import BackupError, BackupFailed, FailedItem


class TaskPool:
    """Runs jobs as tasks, at most ``limit`` alive at once.

    ``spawn`` waits for room, so a walk of a million files never has a million tasks alive. When a
    job raises a ``BackupError``, every other job and the body of the ``async with`` are cancelled,
    and the pool raises ``BackupFailed`` naming each file that failed.
    """

    def __init__(
        self,
        operation: str,
        *,
        limit: int,
        hint: Callable[[], str] = str,
        outcome: str = "nothing was committed",
    ) -> None:
        self._operation = operation
        self._outcome = outcome  # what a failure leaves behind, as ``BackupFailed`` says it
        self._room = asyncio.Semaphore(limit)
        self._group = asyncio.TaskGroup()
        self._hint = hint
        self.failures: list[FailedItem] = []

    async def __aenter__(self) -> TaskPool:
        await self._group.__aenter__()
        return self

    async def spawn(self, label: str, job: Callable[[], Awaitable[None]]) -> None:
        """Start ``job()`` as a task once there is room; ``label`` names it if it fails."""
        await self._room.acquire()
        self._group.create_task(self._run(label, job))

    def record(self, label: str, error: BackupError) -> None:
        """Name ``label`` as the failure behind ``error``, raised in the body of the pool."""
        self.failures.append(FailedItem(label, error))

    async def _run(self, label: str, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except BackupError as exc:
            self.failures.append(FailedItem(label, exc))
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # a real cancel: of the job, or by the pool after a failure
            # A CancelledError the job raised itself (an SDK's, say) would end this task quietly
            # in a TaskGroup, as if its work were done: make it a failure.
            error = BackupError(f"{label}: the transfer was cancelled from within")
            self.failures.append(FailedItem(label, error))
            raise error from None
        finally:
            self._room.release()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            recorded = {id(f.error) for f in self.failures}
            others, rest = group.split(BackupError)
            if rest is not None:
                raise  # a bug, not a store or input failure: show it whole
            assert others is not None
            for error in others.exceptions:
                if id(error) not in recorded and isinstance(error, BackupError):
                    self.failures.append(FailedItem("", error))
            raise BackupFailed(
                self._operation, self.failures, hint=self._hint(), outcome=self._outcome
            ) from None
