"""A byte budget: how much file data a job may hold in memory at once, whatever the chunk size.

A backup reads ahead of its uploads and a restore downloads ahead of its writes; counting that
in chunks (``2 x concurrency`` of them) let a backup of one 1 GiB file at concurrency 64 hold
717 MiB. Both now take bytes from one ``ByteBudget`` before they hold a buffer, and give them
back once the buffer is gone (uploaded, or written to the target), so the file data held stays
under ``EngineConfig.buffer_budget``.

Waiters are served first come, first served, so a large request is never starved by a stream
of small ones.

A cache may hold bytes of the budget too, as its lowest use, on three conditions that keep it
from holding a buffer back for longer than one of its fetches: it takes bytes only with
``try_acquire`` (never while someone waits); it registers a ``reclaim`` callback, which
``acquire`` calls before it makes a request wait, and which gives back (``release``) at least the
bytes asked for, or all the cache holds; and a fetch of its own that ends while someone waits
(``waiting``) is given back at once. So a cache holds only what buffers leave unused
(``packread.py``'s pack segments), and never deadlocks them.

A request larger than the whole budget (a chunk bigger than it) waits until nothing else is
held and then proceeds alone: the budget is exceeded by that one buffer, never deadlocked. Bytes
that were granted are always given back by the holder (a ``finally``), and a
waiter cancelled before its turn leaves the queue without taking anything.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress


class ByteBudget:
    """At most ``capacity`` bytes held at once, by ``acquire`` and ``release`` (or ``hold``)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a byte budget must be positive, not {capacity}")
        self.capacity = capacity
        self.held = 0
        self.peak = 0  # the most held at once: what tests and benchmarks compare with capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._reclaimers: list[Callable[[int], None]] = []

    @property
    def waiting(self) -> bool:
        """Whether a request waits for room (a cache that just filled should give it back)."""
        return bool(self._waiters)

    def add_reclaimer(self, reclaim: Callable[[int], None]) -> None:
        """Let a cache hold bytes of this budget: ``reclaim(nbytes)`` must release at least
        ``nbytes`` of what it holds (or all of it), at once, without awaiting."""
        self._reclaimers.append(reclaim)

    def _fits(self, nbytes: int) -> bool:
        # Alone, anything fits: a buffer larger than the budget proceeds with nothing beside it.
        return self.held == 0 or self.held + nbytes <= self.capacity

    def _take(self, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    async def acquire(self, nbytes: int) -> int:
        """Wait until ``nbytes`` fit, take them, and return how many were taken (give exactly
        that back to ``release``)."""
        nbytes = max(0, nbytes)
        for reclaim in self._reclaimers:  # caches give way to buffers before anyone waits
            if self._waiters or self._fits(nbytes):
                break
            reclaim(self.held + nbytes - self.capacity)
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return nbytes
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(nbytes)  # granted as we were cancelled: give it back
            else:
                with suppress(ValueError):  # not there if a wake-up skipped it already
                    self._waiters.remove((nbytes, turn))
                self._wake()  # we may have been the head that held the others back
            raise
        return nbytes

    def try_acquire(self, nbytes: int) -> bool:
        """Take ``nbytes`` if they fit now beside what is held (never alone past the capacity),
        and nobody is waiting; whether they were taken."""
        if self._waiters or self.held + nbytes > self.capacity:
            return False
        self._take(nbytes)
        return True

    def force(self, nbytes: int) -> int:
        """Take ``nbytes`` without waiting: for a buffer already held that turned out larger
        than was asked for (a file that grew since it was listed). Returns ``nbytes``."""
        self._take(max(0, nbytes))
        return max(0, nbytes)

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` taken earlier, and wake the waiters they make room for."""
        self.held -= nbytes
        assert self.held >= 0, "released more bytes than were taken"
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes, turn = self._waiters.popleft()
            if turn.done():  # cancelled meanwhile: its task removes nothing, it is gone
                continue
            self._take(nbytes)
            turn.set_result(None)

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[int]:
        """``nbytes`` taken for the body of the ``async with``, given back on every way out."""
        taken = await self.acquire(nbytes)
        try:
            yield taken
        finally:
            self.release(taken)
