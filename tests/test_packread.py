"""Reading packed chunks (``packread.py``): a restore that two repacks overtake reads the INDEX
again until it stops changing, a pack that is really missing is named, and the segments held
between their chunks' uses take from the restore's one byte budget, giving way to buffers."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    EngineConfig,
    MemoryStorage,
    RetentionPolicy,
    RetryPolicy,
)
from asyncbackup import restore as restore_module
from asyncbackup.budget import ByteBudget
from asyncbackup.chunking import sha256_hex
from asyncbackup.errors import ObjectNotFoundError
from asyncbackup.layout import PACKS, index_key
from asyncbackup.metrics import Metrics
from asyncbackup.packread import ChunkSource
from asyncbackup.packs import PackIndex, build_pack
from asyncbackup.prune import PruneReport
from asyncbackup.repository import Repository
from asyncbackup.retry import Retrier
from tests.conftest import SMALL_CHUNK, assert_same_tree, fast_config
from tests.packed import pack_keys
from tests.stores import WatchedStorage

KiB = 1024
MiB = 1024 * KiB
PACKED = fast_config(pack_threshold=SMALL_CHUNK)  # small chunks into packs of 64 KiB


def small_files(root: Path, names: range) -> None:
    for i in names:
        root.mkdir(parents=True, exist_ok=True)
        (root / f"f{i:04d}").write_bytes(random.Random(i).randbytes(3000))


def keep_only(root: Path, names: range) -> None:
    wanted = {f"f{i:04d}" for i in names}
    for path in root.iterdir():
        if path.name not in wanted:
            path.unlink()


class PrunesBetweenReads(WatchedStorage):
    """A store on which whole prunes run while a restore reads packs: the first when it first
    reads a pack, each next one when it first reads a pack the prune before wrote (that is,
    after the restore read the INDEX again and went to the new place). Pack reads wait while a
    prune runs, so every read falls between two prunes, never inside one: deterministic."""

    def __init__(self, inner: MemoryStorage, policies: list[RetentionPolicy]) -> None:
        super().__init__(inner)
        self.engine = BackupEngine(inner, PACKED)  # the prunes go straight to the store
        self.policies = policies
        self.reports: list[PruneReport] = []
        self._made: set[str] | None = None  # the packs the last prune wrote
        self._idle = asyncio.Event()
        self._idle.set()

    async def _before_read(self, key: str) -> None:
        if not key.startswith(PACKS):
            return
        await self._idle.wait()
        if not self.policies or (self._made is not None and key not in self._made):
            return
        self._idle.clear()
        try:
            before = await pack_keys(self.inner)
            self.reports.append(await self.engine.prune(self.policies.pop(0), grace=0))
            self._made = await pack_keys(self.inner) - before
        finally:
            self._idle.set()

    async def get(self, key: str) -> bytes:
        await self._before_read(key)
        return await super().get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        await self._before_read(key)
        return await super().get_range(key, start, length)


async def three_generations(tmp_path: Path) -> tuple[MemoryStorage, Path]:
    """b1 (90 files), b2 (every 3rd of them), b3 (every 6th), each packing with its parent's
    INDEX, so b3's chunks lie in b1's packs. Keeping 2 repacks b1's packs (a third of them
    live) into new ones; keeping 1 then repacks those (half of them live) again."""
    source = tmp_path / "src"
    small_files(source, range(90))
    store = MemoryStorage()
    engine = BackupEngine(store, PACKED)
    await engine.backup(source, name="b1")
    keep_only(source, range(0, 90, 3))
    await engine.backup(source, name="b2")
    keep_only(source, range(0, 90, 6))
    await engine.backup(source, name="b3")
    return store, source


async def test_a_restore_overtaken_by_two_repacks_reads_the_index_until_it_stops_changing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, source = await three_generations(tmp_path)
    first_packs = await pack_keys(store)
    keep_two, keep_one = RetentionPolicy(keep_last=2), RetentionPolicy(keep_last=1)
    racing = PrunesBetweenReads(store, [keep_two, keep_one])
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        await BackupEngine(racing, PACKED).restore("b3", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")

    # Both prunes ran under the restore, and each moved b3's chunks to packs of its own.
    assert [r.packs_repacked > 0 and r.packs_written > 0 for r in racing.reports] == [True] * 2
    assert not first_packs & await pack_keys(store)
    # The INDEX was read when the restore began, then again after each repack: not more.
    assert racing.calls["get", index_key("b3")] == 3
    assert caplog.text.count("a pack was missing: read the INDEX of b3 again") == 2


async def test_a_pack_missing_with_no_repack_fails_naming_it_after_one_more_index_read(
    tmp_path: Path,
) -> None:
    store, _ = await three_generations(tmp_path)
    index = await Repository(store, retrier(), operation="restore").load_index("b3")
    lost, place = min(index.places.items())  # a chunk of b3, and the pack it lies in
    gone = PACKS + place.pack
    del store.objects[gone]
    with pytest.raises(BackupFailed) as failed:
        await BackupEngine(store, PACKED).restore("b3", tmp_path / "out")
    said = str(failed.value)
    assert f"{gone} is missing: it holds chunk " in said
    assert "INDEX of b3, read again, still places it there (no repack moved it)" in said

    # One reader, one chunk: the INDEX is read again once, found the same, the chunk read at
    # its place once more (a pack of the same bytes may have been written again), and that is
    # the end.
    watched = WatchedStorage(store)
    source = ChunkSource(Repository(watched, retrier(), operation="restore"), index, names=["b3"])
    with pytest.raises(ObjectNotFoundError, match=f"{gone} is missing: it holds chunk {lost}"):
        await get(source, lost)
    assert watched.calls["get", index_key("b3")] == 1
    assert watched.calls["get_range", gone] == 2  # tried once more there, not in a loop


# The byte budget: segments draw from the restore's budget and give way to buffers.


class Packs(MemoryStorage):
    """A memory store whose range reads of packs can be held at a gate, to place a buffer's
    request exactly while a segment is being fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.ranges = 0

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().get_range(key, start, length)


async def one_pack(store: MemoryStorage, chunks: int, size: int) -> tuple[PackIndex, list[str]]:
    """A pack of ``chunks`` raw chunks of ``size`` bytes; its INDEX and the refs in order."""
    datas = [random.Random(i).randbytes(size) for i in range(chunks)]
    pack = build_pack([(sha256_hex(d), d, len(d)) for d in datas])
    await store.put(PACKS + pack.pack_id, pack.data)
    index = PackIndex()
    index.add_pack(pack.pack_id, len(pack.data), pack.chunks)
    return index, [sha256_hex(d) for d in datas]


def retrier() -> Retrier:
    metrics = Metrics(CollectorRegistry())
    return Retrier(RetryPolicy(max_attempts=1), concurrency=4, metrics=metrics)


def source_over(store: MemoryStorage, index: PackIndex, budget: ByteBudget) -> ChunkSource:
    return ChunkSource(Repository(store, retrier(), operation="restore"), index, budget=budget)


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (no clock: a number of turns)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the other tasks never got there")


async def get(source: ChunkSource, ref: str) -> bytes:
    return await source.get(ref, limit=MiB, path="f", label="chunk")


async def test_a_held_segment_counts_in_the_budget_and_gives_way_to_a_buffer() -> None:
    store = Packs()
    index, refs = await one_pack(store, chunks=4, size=100 * KiB)
    budget = ByteBudget(MiB)
    source = source_over(store, index, budget)
    source.plan(refs)  # all of the pack: one whole read, held until its 4th chunk is served
    assert await get(source, refs[0]) == random.Random(0).randbytes(100 * KiB)
    held = source.held
    assert held > 4 * 100 * KiB and budget.held == held  # the segment is in the budget
    assert source.requests == 1

    # A buffer that fits only without the segment: taken at once, the segment let go.
    taken = await asyncio.wait_for(budget.acquire(MiB - 100 * KiB), timeout=5)
    assert (source.held, budget.held) == (0, taken)
    # The segment's next chunk is read alone, and none is held while the budget has no room.
    assert await get(source, refs[1]) == random.Random(1).randbytes(100 * KiB)
    assert (source.requests, source.held, budget.held) == (2, 0, taken)
    budget.release(taken)
    assert budget.held == 0 and budget.peak <= MiB


async def test_a_segment_fetched_while_a_buffer_waits_is_not_kept() -> None:
    store = Packs()
    index, refs = await one_pack(store, chunks=4, size=100 * KiB)
    budget = ByteBudget(MiB)
    source = source_over(store, index, budget)
    source.plan(refs[:2])  # half of the pack: one range read for both chunks
    store.gate = asyncio.Event()
    first = asyncio.create_task(get(source, refs[0]))
    await until(lambda: store.ranges == 1)  # the segment's bytes are taken, its read waits
    reserved = budget.held
    assert reserved >= 2 * 100 * KiB and source.held == 0  # reserved, not held yet
    buffer = asyncio.create_task(budget.acquire(MiB - reserved + 1))  # cannot fit beside it
    await until(lambda: budget.waiting)
    assert not buffer.done()
    store.gate.set()
    assert await first == random.Random(0).randbytes(100 * KiB)
    taken = await asyncio.wait_for(buffer, timeout=5)
    assert (source.held, budget.held) == (0, taken)  # given back as soon as it was fetched
    assert budget.peak <= MiB


class Sampled(MemoryStorage):
    """At every read, and every time the budget gives or takes bytes, notes the bytes the
    restore's segments really hold (their data, counted from the objects, not from the
    budget's books) beside what its budget says is held."""

    def __init__(self) -> None:
        super().__init__()
        self.budget: ByteBudget | None = None
        self.sources: list[ChunkSource] = []
        self.samples: list[tuple[int, int]] = []  # (segment bytes held, budget held)

    def sample(self) -> None:
        if self.budget is not None and self.sources:
            segments = self.sources[-1]._segments.values()
            held = sum(len(s.data) for s in {id(s): s for s in segments}.values() if s.data)
            self.samples.append((held, self.budget.held))

    async def get(self, key: str) -> bytes:
        self.sample()
        return await super().get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.sample()
        return await super().get_range(key, start, length)


async def test_a_restore_holds_segments_and_buffers_within_one_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(120):  # small files: packed, in packs of 256 KiB read whole
        (source / f"s{i:03d}").write_bytes(random.Random(i).randbytes(12 * KiB))
    for i in range(6):  # large ones among them: chunks of 256 KiB whose buffers fill the budget
        (source / f"s{20 * i:03d}+").write_bytes(random.Random(1000 + i).randbytes(MiB))
    # 8 tasks alive at once (2 x concurrency), fewer than a pack's 21 chunks: a task ends, and
    # gives its buffer back, while the pack it read whole is still held for the others; and
    # 4 large chunks' buffers (1 MiB) need the room the segments hold.
    config = EngineConfig(
        concurrency=4,
        chunk_size=256 * KiB,
        pack_threshold=SMALL_CHUNK,
        pack_size=256 * KiB,
        buffer_budget=MiB,
    )
    store = Sampled()
    await BackupEngine(store, config).backup(source, name="b")

    class Budget(ByteBudget):
        def __init__(self, capacity: int) -> None:
            super().__init__(capacity)
            store.budget = self

        def _take(self, nbytes: int) -> None:
            super()._take(nbytes)
            store.sample()

        def release(self, nbytes: int) -> None:
            super().release(nbytes)
            store.sample()

    class Source(ChunkSource):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            store.sources.append(self)

    monkeypatch.setattr(restore_module, "ByteBudget", Budget)
    monkeypatch.setattr(restore_module, "ChunkSource", Source)
    await BackupEngine(store, config).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")

    budget = store.budget
    assert budget is not None and store.sources[-1].budget is budget  # one budget for both
    assert max(held for held, _ in store.samples) >= 256 * KiB  # whole packs were held
    # Every segment held is counted in the budget, and the budget never went over.
    assert all(segments <= books <= MiB for segments, books in store.samples)
    assert budget.peak <= MiB and budget.held == 0
