"""Small files' reads share worker-thread trips (``batching.ThreadBatch``), each caller still
getting its own bytes or its own error."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupEngine, EngineConfig, MemoryStorage
from asyncbackup.batching import ThreadBatch
from asyncbackup.chunking import ChunkReader
from asyncbackup.errors import SourceVanishedError
from asyncbackup.threads import using
from tests.conftest import SMALL_CHUNK, assert_same_tree


class CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the calls it was given: the trips to a worker thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.calls = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


def small_files(root: Path, count: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"f{i:03d}" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(os.urandom(100 + i))
    return paths


async def test_reads_of_many_small_files_share_thread_trips(tmp_path: Path) -> None:
    paths = small_files(tmp_path / "src", 64)
    (tmp_path / "src" / "f007").unlink()  # vanished after the walk: its reader alone fails
    pool = CountingPool()
    batch = ThreadBatch(limit=16)
    with using(pool):
        readers = [ChunkReader(path, SMALL_CHUNK, batch=batch) for path in paths]
        results = await asyncio.gather(
            *(reader.next_chunk() for reader in readers), return_exceptions=True
        )
    pool.shutdown()
    for path, result in zip(paths, results, strict=True):
        if path.name == "f007":
            assert isinstance(result, SourceVanishedError) and "f007" in str(result)
            continue
        assert isinstance(result, tuple)
        data, digest = result
        assert data == path.read_bytes() and digest == hashlib.sha256(data).hexdigest()
    assert batch.trips == 4 and pool.calls == 4  # 64 reads in trips of 16, not 64 trips
    assert all(r._fd is None for r in readers)  # every small file closed in its one step


async def test_a_cancelled_reader_never_leaves_its_file_open(tmp_path: Path) -> None:
    (big,) = small_files(tmp_path / "src", 1)
    big.write_bytes(os.urandom(3 * SMALL_CHUNK))  # not done in one step: the step keeps it open
    gate = threading.Event()
    batch = ThreadBatch()
    with using(pool := ThreadPoolExecutor(max_workers=2)):
        reader = ChunkReader(big, SMALL_CHUNK, batch=batch)
        held = asyncio.ensure_future(batch.run(gate.wait))  # the batch's first call blocks
        step = asyncio.ensure_future(reader.next_chunk())  # the same batch, after it
        await asyncio.sleep(0.05)
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        await reader.aclose()  # on the other worker, before the step could run
        gate.set()  # now the cancelled step runs, late
        assert await held is True
        await asyncio.gather(*batch._running)
    pool.shutdown()
    assert reader._fd is None  # closed first, so the late step did not open it


async def test_a_backup_of_many_small_files_makes_few_thread_trips(tmp_path: Path) -> None:
    source = tmp_path / "src"
    small_files(source, 300)
    pool = CountingPool()
    store = MemoryStorage()
    engine = BackupEngine(store, EngineConfig(concurrency=64), executor=pool)
    summary = await engine.backup(source, name="b")
    assert summary.files == 300 and summary.chunks_uploaded == 300
    trips = pool.calls
    await engine.restore("b", tmp_path / "restored")
    pool.shutdown()
    assert_same_tree(source, tmp_path / "restored")
    # One trip per file before batching (300), plus the walk's and the MANIFEST's few.
    assert trips < 150, trips
