"""Chunks that a job uses more than once: fetched once, held until their last use.

A backup names a chunk as often as its content recurs (the zero chunk of a sparse file, a file
copied ten times). A restore or a deep verify would fetch it at every use; this keeps each such
chunk from its first fetch until its last use, within the job's byte budget (``budget.py``: a
held chunk takes its bytes from it only if they are free at once, so keeping a chunk never makes
a download wait). A chunk that does not fit is fetched again at its next use, which is only ever
slower, never wrong.

Chunks made only of zeros are never fetched at all: their content is known from their hash.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from asyncbackup.budget import ByteBudget
from asyncbackup.layout import digest_of_ref

Fetch = Callable[[], Awaitable[bytes]]
_ZERO_BLOCK = bytes(1024 * 1024)


def zero_digest(size: int) -> str:
    """The sha256 of ``size`` zero bytes, hashed a block at a time (no ``size``-byte buffer)."""
    digest = hashlib.sha256()
    left = size
    while left:
        step = min(left, len(_ZERO_BLOCK))
        digest.update(_ZERO_BLOCK[:step] if step < len(_ZERO_BLOCK) else _ZERO_BLOCK)
        left -= step
    return digest.hexdigest()


class SharedChunks:
    """Remaining uses of each chunk used more than once, and those held in memory for them."""

    def __init__(self, refs: Iterable[str], *, budget: ByteBudget) -> None:
        counts = Counter(refs)
        self._left = {ref: n for ref, n in counts.items() if n > 1}
        self._held: dict[str, bytes] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._budget = budget
        self.fetched = 0  # fetches made through ``get``
        self.reused = 0  # uses served from memory

    async def get(self, ref: str, fetch: Fetch) -> bytes:
        """Chunk ``ref``: from memory if an earlier use kept it, else from ``fetch()``."""
        if ref not in self._left:
            self.fetched += 1
            return await fetch()
        lock = self._locks.setdefault(ref, asyncio.Lock())
        async with lock:  # a second use waits for the first one's fetch, not a fetch of its own
            data = self._held.get(ref)
            if data is None:
                data = await fetch()
                self.fetched += 1
                if self._left[ref] > 1 and self._budget.try_acquire(len(data)):
                    self._held[ref] = data
            else:
                self.reused += 1
            self._used(ref)
        return data

    def is_shared(self, ref: str) -> bool:
        """Whether ``ref`` has uses still to come besides one (so it is worth keeping)."""
        return ref in self._left

    def skip(self, refs: Iterable[str]) -> None:
        """Count uses that will not happen (a file found already in place)."""
        for ref in refs:
            if ref in self._left:
                self._used(ref)

    def _used(self, ref: str) -> None:
        self._left[ref] -= 1
        if self._left[ref] == 0:  # its last use: let it go
            del self._left[ref]
            self._locks.pop(ref, None)
            data = self._held.pop(ref, None)
            if data is not None:
                self._budget.release(len(data))


def is_zero_chunk(ref: str, size: int, zero: dict[int, str]) -> bool:
    """Whether ``ref`` names ``size`` zero bytes; ``zero`` maps sizes to the digests known."""
    known = zero.get(size)
    return known is not None and digest_of_ref(ref) == known
