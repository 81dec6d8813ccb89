"""The byte budget: read-ahead (backup) and streamed downloads (restore) bounded in bytes.

Unit tests of ``ByteBudget``, then whole jobs on the memory store, where a slow store lets
read-ahead fill everything it is allowed: the most bytes held, and the most transfers in flight
at once, stay within the budget, and a chunk larger than the budget still goes through alone.

Chunks here are small (so tests stay fast) but stand for large ones: packs are off
(``pack_threshold=0``), so each is an object of its own, as a large chunk is.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from asyncbackup import (
    BackupEngine,
    ConfigError,
    EngineConfig,
    MemoryStorage,
    RetryPolicy,
    backup_state,
)
from asyncbackup import restore as restore_module
from asyncbackup.budget import ByteBudget
from asyncbackup.storage.base import Storage
from tests.conftest import RecordingSleep, assert_same_tree
from tests.stores import WatchedStorage

KiB = 1024
MiB = 1024 * KiB


async def test_waiters_are_served_in_order_and_a_large_one_is_not_starved() -> None:
    budget = ByteBudget(10)
    assert await budget.acquire(6) == 6
    order: list[str] = []

    async def take(name: str, nbytes: int) -> None:
        await budget.acquire(nbytes)
        order.append(name)

    large = asyncio.create_task(take("large", 8))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 2))  # fits now, but waits behind the large one
    await asyncio.sleep(0)
    assert order == [] and budget.held == 6
    budget.release(6)
    await asyncio.gather(large, small)
    assert order == ["large", "small"] and budget.held == 10 and budget.peak == 10


async def test_a_request_larger_than_the_budget_waits_for_nothing_held_then_goes_alone() -> None:
    budget = ByteBudget(10)
    await budget.acquire(3)
    huge = asyncio.create_task(budget.acquire(25))
    await asyncio.sleep(0)
    assert not huge.done()  # 3 bytes are held: it waits
    budget.release(3)
    assert await huge == 25 and budget.held == 25  # alone, past the capacity
    late = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not late.done()  # nothing beside it
    budget.release(25)
    await late
    assert budget.held == 1


async def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_one_in() -> None:
    budget = ByteBudget(10)
    await budget.acquire(9)
    first = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    second = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not second.done()  # behind the first, though it would fit
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == 1 and budget.held == 10
    assert not budget.try_acquire(1)  # full
    budget.release(10)
    assert budget.try_acquire(10) and budget.held == 10


def test_a_budget_below_one_mib_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match="buffer budget must be at least 1 MiB, not 1000 bytes"):
        EngineConfig(buffer_budget=1000)


class SlowStreams(WatchedStorage):
    """Every put and every download takes a while, so read-ahead and downloads pile up as far
    as they are allowed; counts the most streamed downloads in flight at once."""

    def __init__(self, inner: Storage, delay: float) -> None:
        super().__init__(inner, on_put=self._slow)  # inside the count of puts in flight
        self.delay = delay
        self.open_streams = 0
        self.max_streams = 0

    async def _slow(self, key: str) -> None:
        await asyncio.sleep(self.delay)

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        self.open_streams += 1
        self.max_streams = max(self.max_streams, self.open_streams)
        try:
            await asyncio.sleep(self.delay)
            yield await self.inner.get(key)
        finally:
            self.open_streams -= 1


class Recorded(ByteBudget):
    """A ``ByteBudget`` that keeps every instance made, so a test can read a job's peak."""

    made: list[Recorded] = []  # noqa: RUF012 - reset by the fixture

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        Recorded.made.append(self)


@pytest.fixture
def budgets(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    Recorded.made = []
    monkeypatch.setattr(backup_state, "ByteBudget", Recorded)  # the job's buffers
    monkeypatch.setattr(restore_module, "ByteBudget", Recorded)
    return Recorded.made


def big_file(root: Path, size: int) -> Path:
    root.mkdir()
    (root / "big.bin").write_bytes(random.Random(15).randbytes(size))
    return root


async def test_read_ahead_and_downloads_stay_within_the_budget(
    tmp_path: Path, budgets: list[Recorded], sleep: RecordingSleep
) -> None:
    chunk = 64 * KiB
    source = big_file(tmp_path / "source", 64 * chunk)
    config = EngineConfig(concurrency=64, chunk_size=chunk, buffer_budget=MiB, pack_threshold=0)
    # 0.2 s a request: even on a loaded machine, reading 8 chunks of 64 KiB takes far less,
    # so read-ahead fills the budget before the first uploads end.
    store = SlowStreams(MemoryStorage(), delay=0.2)
    engine = BackupEngine(store, config, sleep=sleep)

    await engine.backup(source, name="b")
    [backup_budget] = budgets
    # 64 transfers were allowed, and 128 chunks of read-ahead; 1 MiB is 16 chunks.
    assert store.max_in_flight <= MiB // chunk
    assert MiB // 2 <= backup_budget.peak <= MiB  # it filled up, and no further
    assert backup_budget.held == 0  # every buffer given back

    await engine.restore("b", tmp_path / "restored")
    restore_budget = budgets[-1]
    # This store gives each chunk whole (it does not stream): 64 KiB each, 16 at once in 1 MiB.
    assert 2 <= store.max_streams <= MiB // chunk
    assert restore_budget.peak <= MiB and restore_budget.held == 0
    assert_same_tree(source, tmp_path / "restored")


@pytest.mark.parametrize("compression", ["none", "zstd"])
async def test_chunks_larger_than_the_budget_go_through_one_at_a_time(
    tmp_path: Path, budgets: list[Recorded], sleep: RecordingSleep, compression: str
) -> None:
    from asyncbackup.compression import Compression

    chunk = 2 * MiB  # each chunk alone is over the 1 MiB budget: no deadlock, one at a time
    source = big_file(tmp_path / "source", 5 * chunk + 7)
    config = EngineConfig(
        concurrency=8,
        chunk_size=chunk,
        buffer_budget=MiB,
        compression=Compression(compression),  # type: ignore[arg-type]
        retry=RetryPolicy(attempt_timeout=30),
    )
    store = SlowStreams(MemoryStorage(), delay=0.01)
    engine = BackupEngine(store, config, sleep=sleep)
    summary = await asyncio.wait_for(engine.backup(source, name="b"), timeout=60)
    assert summary.chunks_uploaded == 6
    assert store.max_in_flight == 1
    assert budgets[0].peak <= 2 * chunk  # one chunk (and, compressed, its encoded copy)

    await asyncio.wait_for(engine.restore("b", tmp_path / "restored"), timeout=60)
    assert store.max_streams == 1
    assert_same_tree(source, tmp_path / "restored")
