"""Many short blocking calls in one worker-thread trip: the reads of small files."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from asyncbackup.threads import to_thread

R = TypeVar("R")
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception it raised)


class ThreadBatch:
    """Runs the calls made in one turn of the event loop together, in one worker thread.

    A trip to a worker thread costs the event loop tens of microseconds (the submit, the future's
    callbacks, the wake-up through the loop's self-pipe), more than reading and hashing a 4 KiB
    file. So a backup's first read of each file waits for the reads asked for in the same turn of
    the loop, up to ``limit`` of them, and they run one after another in one thread call; each
    caller gets its own result or exception. Batches still run in parallel on the pool, so a
    backup at concurrency 64 keeps about four reading at once. A cancelled caller's call may still
    run (as a cancelled ``to_thread`` does); its result is dropped.
    """

    def __init__(self, *, limit: int = 16) -> None:
        self._limit = limit
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._running: set[asyncio.Future[list[Outcome]]] = set()
        self.trips = 0  # thread calls made: what the batching saves, for tests and benchmarks

    async def run(self, call: Callable[[], R]) -> R:
        """``call()`` in a worker thread, batched with the calls made in the same turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((call, future))
        if len(self._pending) >= self._limit:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_scheduled)  # in the caller's context: the engine's pool
        return await future

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.trips += 1
        calls = [call for call, _ in batch]
        work = asyncio.ensure_future(to_thread(_run_all, calls))
        self._running.add(work)  # a reference until it is done
        work.add_done_callback(partial(self._settle, [future for _, future in batch]))

    def _settle(
        self, futures: list[asyncio.Future[Any]], work: asyncio.Future[list[Outcome]]
    ) -> None:
        self._running.discard(work)
        if work.cancelled():
            for future in futures:
                future.cancel()
            return
        failure = work.exception()
        outcomes = work.result() if failure is None else [(False, failure)] * len(futures)
        for future, (ok, value) in zip(futures, outcomes, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _run_all(calls: list[Callable[[], Any]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for call in calls:
        try:
            outcomes.append((True, call()))
        except Exception as exc:  # handed to its own caller, raised there
            outcomes.append((False, exc))
    return outcomes
