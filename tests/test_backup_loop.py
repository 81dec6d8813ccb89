"""A whole backup, embedded in a service's event loop, stalls it neither by freeing what it held
in one go nor by bringing on full garbage collections with objects of its own. Counted, not
timed: the memory blocks freed between two turns of a ticker on the loop, and the objects the
collector promotes to its oldest generation (whose growth brings on a full collection, which
walks every tracked object of the process with the GIL held).

On the in-memory store: what is tested is what the job holds and frees, not a store.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupEngine, EngineConfig, MemoryStorage, freeing
from asyncbackup.layout import SOURCE_MARK, manifest_key
from asyncbackup.walk import Batch, walk_batches
from tests.conftest import RecordingSleep

FILES = 3000


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``FILES`` small files in 10 directories: every one packed."""
    root = tmp_path_factory.mktemp("tree")
    for i in range(FILES):
        folder = root / f"d{i % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}").write_bytes(b"%d\n" % i * 8)
    return root


async def test_a_backup_frees_what_it_held_a_part_at_a_time_once_committed(
    tree: Path, sleep: RecordingSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its MANIFEST is written, a backup used to drop its entries, what the store holds
    and where, and its parent, all at once as it returned: one C call of tens of ms for
    100,000 files. Now no turn of the loop after the commit frees more than a few blocks for
    each of the ``FREES_PER_TURN`` items it drops (a parsed entry is about 8: itself, its
    path, type, sha256, its chunks' tuple and ref...), made 100 here so that the bound (with
    room for a worker thread's own frees in the same turn) is far below what dropping 3,000
    entries at once frees. The collector is off: what it frees of
    earlier tests' cycles is not the backup's."""
    monkeypatch.setattr(freeing, "FREES_PER_TURN", 100)
    store = MemoryStorage()
    engine = BackupEngine(store, EngineConfig(), sleep=sleep)
    await engine.backup(tree, name="first")  # the next ones have a parent to free too
    for name in ("again", "third"):
        after_commit = await freed_per_turn_after_commit(engine, store, tree, name)
        assert after_commit  # the ticker ran after the commit
        # Dropped at once, 3,000 entries were over 20,000 blocks in one turn
        assert max(after_commit) <= 30 * freeing.FREES_PER_TURN < 3 * FILES, name


async def freed_per_turn_after_commit(
    engine: BackupEngine, store: MemoryStorage, tree: Path, name: str
) -> list[int]:
    """Back ``tree`` up as ``name``: the blocks freed in each turn of the loop once it is
    committed, its source mark written (after the MANIFEST: the commit's worker-thread calls
    have all returned)."""
    after_commit: list[int] = []
    stop = committed = False
    mark = manifest_key(name).rpartition("/")[0] + "/" + SOURCE_MARK

    async def ticker() -> None:
        nonlocal committed
        last = sys.getallocatedblocks()
        while not stop:
            await asyncio.sleep(0)
            now = sys.getallocatedblocks()
            if committed or any(k.startswith(mark) for k in store.objects):
                committed = True
                after_commit.append(last - now)
            last = now

    gc.collect()
    gc.disable()
    task = asyncio.create_task(ticker())
    try:
        summary = await engine.backup(tree, name=name)
    finally:
        stop = True
        await task
        gc.enable()
    assert summary.files == FILES
    return after_commit


@pytest.fixture
def promotions() -> Iterator[Counter[str]]:
    """The objects, by type, that each collection of the middle generation promotes to the
    oldest one (those alive in the young generations at its start, alive in the oldest at its
    end), while the test runs."""
    promoted: Counter[str] = Counter()
    young: dict[int, str] = {}

    def watch(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 1:
            return
        if phase == "start":
            young.update(
                (id(o), type(o).__qualname__) for g in (0, 1) for o in gc.get_objects(generation=g)
            )
        else:
            for o in gc.get_objects(generation=2):
                kind = young.get(id(o))
                if kind is not None:
                    promoted[kind] += 1
            young.clear()

    gc.collect()
    gc.callbacks.append(watch)
    try:
        yield promoted
    finally:
        gc.callbacks.remove(watch)


async def test_a_backups_walk_entries_and_pack_rows_never_reach_the_oldest_generation(
    tree: Path, sleep: RecordingSleep, promotions: Counter[str]
) -> None:
    """The walk runs thousands of entries ahead of the uploads, and a pack's trailer lists
    each of its chunks: as tracked objects (a dataclass, lists) they outlived the young
    collections, about one of each per file reached the oldest generation, and a backup of
    20,000 files brought on two full collections. The walk's entries are untracked now, and
    the trailer's rows tuples, which the collector untracks at its first look."""
    engine = BackupEngine(MemoryStorage(), EngineConfig(), sleep=sleep)
    summary = await engine.backup(tree, name="first")
    assert summary.files == FILES
    assert sum(promotions.values()) > 0  # the collections were watched
    assert promotions["SourceEntry"] == 0
    # About 2,000 (0.7 a file) before; a few hundred of the job's own now
    assert promotions["list"] < FILES // 4, promotions.most_common(5)


async def test_walk_entries_are_not_tracked_by_the_collector(tree: Path) -> None:
    batch: Batch[None]
    async for batch in walk_batches(tree):
        assert batch.entries and not any(gc.is_tracked(e) for e in batch.entries)
        break
