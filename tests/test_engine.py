"""The engine over the memory and local stores: format, dedup, resume, bounds, cancellation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    EngineConfig,
    IntegrityError,
    LocalStorage,
    ManifestError,
    MemoryStorage,
    Metrics,
)
from asyncbackup.backup import BackupJob
from asyncbackup.layout import manifest_key
from asyncbackup.progress import NoProgress
from tests.conftest import SMALL_CHUNK, RecordingSleep, assert_same_tree, fast_config
from tests.stores import WatchedStorage


def chunk_keys(store: MemoryStorage) -> set[str]:
    return {k for k in store.objects if k.startswith("chunks/")}


async def test_identical_chunks_are_stored_once(tree: Path, sleep: RecordingSleep) -> None:
    store = MemoryStorage()
    summary = await BackupEngine(store, fast_config(), sleep=sleep).backup(tree, name="one")
    manifest = await BackupEngine(store).manifest("one")
    assert len(chunk_keys(store)) == manifest.totals.unique_chunks
    assert manifest.totals.chunks == manifest.totals.unique_chunks + 1  # dup-a and dup-b
    assert summary.chunks_uploaded == manifest.totals.unique_chunks
    assert summary.chunks_skipped == 1


async def test_one_big_file_uses_every_slot(tmp_path: Path) -> None:
    """Concurrency is over chunks: one file of 16 chunks fills 8 slots. The first 8 puts wait
    for each other at a barrier, which only opens if 8 are in flight at once."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "huge").write_bytes(os.urandom(16 * SMALL_CHUNK))
    barrier = asyncio.Barrier(8)
    seen = 0

    async def gather_eight(key: str) -> None:
        nonlocal seen
        if key.startswith("chunks/") and seen < 8:
            seen += 1
            await barrier.wait()

    watched = WatchedStorage(MemoryStorage(), on_put=gather_eight)
    async with asyncio.timeout(10):
        await BackupEngine(watched, fast_config(concurrency=8)).backup(tmp_path / "src")
    assert watched.max_in_flight == 8


async def test_many_files_never_need_many_tasks(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(2000):
        (source / f"f{i}").write_bytes(b"%d" % i)
    watched = WatchedStorage(MemoryStorage())
    config = fast_config(concurrency=4)
    summary = await BackupEngine(watched, config).backup(source, name="one")
    assert summary.files == 2000
    assert watched.max_in_flight <= 4
    # The buffered chunks' tasks, plus the test's own task and a handful of helpers.
    assert watched.max_tasks <= config.buffered_chunks + 4


async def test_incremental_backup_uploads_only_changed_chunks(
    tree: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    await engine.backup(tree, name="one")
    content = bytearray((tree / "big.bin").read_bytes())
    content[SMALL_CHUNK + 10] ^= 0xFF  # change one byte of chunk 2 of 4
    (tree / "big.bin").write_bytes(content)
    (tree / "new.txt").write_text("new")
    second = await engine.backup(tree, name="two")
    assert second.chunks_uploaded == 2
    assert second.bytes_uploaded == SMALL_CHUNK + 3


async def test_resume_after_a_crash_uploads_only_what_is_missing(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage()
    puts = 0

    async def die_at_the_sixth_put(key: str) -> None:
        nonlocal puts
        puts += key.startswith("chunks/")
        if puts == 6:  # the process dies mid-backup: the job is cancelled mid-put
            job.cancel()
            await asyncio.Event().wait()

    crashing = WatchedStorage(memory, on_put=die_at_the_sixth_put)
    engine = BackupEngine(crashing, fast_config(concurrency=1), sleep=sleep)
    job = asyncio.create_task(engine.backup(tree, name="one"))
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not any(k.startswith(("backups/", "locks/")) for k in memory.objects)
    left_behind = len(chunk_keys(memory))
    assert left_behind == 5

    watched = WatchedStorage(memory)
    summary = await BackupEngine(watched, fast_config(), sleep=sleep).backup(tree, name="one")
    manifest = await BackupEngine(memory).manifest("one")
    assert watched.puts("chunks/") == manifest.totals.unique_chunks - left_behind
    assert summary.chunks_uploaded == manifest.totals.unique_chunks - left_behind
    # Learnt from one listing of chunks/, never a request per chunk, and never listed again
    # before the commit: the lock keeps a prune out (the other listings: locks/, the name, and
    # backups/ for a parent).
    lists = {key: n for (op, key), n in watched.calls.items() if op == "list"}
    assert lists == {"locks/": 1, "backups/one/MANIFEST": 1, "backups/": 1, "chunks/": 1}
    await BackupEngine(memory).restore("one", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


async def test_cancelling_a_backup_commits_nothing_and_leaves_no_temp_files(
    tree: Path, tmp_path: Path
) -> None:
    local = LocalStorage(tmp_path / "store")
    started = asyncio.Event()

    async def slow(key: str) -> None:
        started.set()
        await asyncio.sleep(0.05)

    task = asyncio.create_task(
        BackupEngine(WatchedStorage(local, on_put=slow), fast_config()).backup(tree, name="one")
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # let worker threads that were mid-write finish
    leftovers = [p for p in (tmp_path / "store").rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert not (tmp_path / "store" / "backups").exists()
    assert await BackupEngine(local).list_backups() == []


async def test_cancelling_a_restore_leaves_no_half_files(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config(), sleep=sleep).backup(tree, name="one")

    class SlowGets(WatchedStorage):
        async def get(self, key: str) -> bytes:
            await asyncio.sleep(0.5)
            return await super().get(key)

    target = tmp_path / "out"
    task = asyncio.create_task(BackupEngine(SlowGets(memory), fast_config()).restore("one", target))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert [p for p in target.rglob("*") if ".asyncbackup-" in p.name] == []
    assert not (target / "big.bin").exists()  # 4 chunks: cannot have finished


async def test_local_store_round_trip_and_layout(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    async with LocalStorage(root) as store:
        engine = BackupEngine(store, fast_config())
        await engine.backup(tree, name="one")
        await engine.restore("one", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    assert (root / "backups" / "one" / "MANIFEST").is_file()
    assert all(len(p.name) == 64 for p in (root / "chunks").iterdir())


async def test_verify_finds_missing_and_corrupt_chunks(tree: Path, sleep: RecordingSleep) -> None:
    store = MemoryStorage()
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    await engine.backup(tree, name="one")
    assert (await engine.verify("one")).ok
    assert (await engine.verify("one", deep=True)).ok
    big = next(e for e in (await engine.manifest("one")).entries if e.path == "big.bin")
    del store.objects[f"chunks/{big.chunks[0]}"]
    store.objects[f"chunks/{big.chunks[1]}"] = b"rotten"
    shallow = await engine.verify("one")
    assert list(shallow.missing) == [big.chunks[0]] and shallow.corrupt == {}
    deep = await engine.verify("one", deep=True)
    assert deep.missing == {big.chunks[0]: ["big.bin"]}
    assert deep.corrupt == {big.chunks[1]: ["big.bin"]}
    assert not deep.ok


async def test_list_and_delete(tree: Path, sleep: RecordingSleep) -> None:
    store = MemoryStorage(page_size=3)  # listings take several pages
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    await engine.backup(tree, name="b-one")
    await engine.backup(tree, name="a-two")
    infos = await engine.list_backups()
    assert [i.name for i in infos] == ["b-one", "a-two"]  # by finish time, not by name
    assert infos[0].files == 13 and infos[0].bytes > 3 * SMALL_CHUNK and infos[0].problem == ""
    store.objects[manifest_key("c-bad")] = b"{not json"
    assert "not valid JSON" in (await engine.list_backups())[2].problem  # listed last
    await engine.delete("b-one")
    assert [i.name for i in await engine.list_backups()] == ["a-two", "c-bad"]
    assert chunk_keys(store)  # chunks stay for a later prune
    with pytest.raises(ManifestError, match="no backup named 'b-one'"):
        await engine.delete("b-one")


async def test_metrics_land_on_the_callers_registry(tree: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    engine = BackupEngine(MemoryStorage(), fast_config(), metrics=Metrics(registry))
    summary = await engine.backup(tree, name="one")
    await engine.restore("one", tmp_path / "out")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("backup_files_total", operation="backup", outcome="done") == summary.files
    assert value("backup_chunks_total", operation="backup", outcome="transferred") == (
        summary.chunks_uploaded
    )
    # A chunk the restore uses twice (dup-a.bin, dup-b.bin) is fetched once: its second use
    # counts as skipped, so transferred and skipped make up every byte.
    restored = [
        value("backup_bytes_total", operation="restore", outcome=outcome) or 0
        for outcome in ("transferred", "skipped")
    ]
    assert restored == [summary.bytes - 10_000, 10_000]
    assert value("backup_retry_attempts_total", operation="backup") == 0
    assert value("backup_inflight_transfers", operation="backup") == 0
    assert (value("backup_last_success_timestamp_seconds", operation="restore") or 0) > 1e9
    assert value("backup_chunk_duration_seconds_count", operation="backup") == (
        # plus: the name check, the listing of backups/ (for a parent), the chunk listing, the
        # sync, the commit, the source mark, and the lock's write, listing of locks/, check
        # before the commit and removal
        summary.chunks_uploaded + 10
    )


def test_config_rejects_nonsense() -> None:
    from asyncbackup import ConfigError, RetryPolicy

    with pytest.raises(ConfigError, match="concurrency"):
        EngineConfig(concurrency=0)
    with pytest.raises(ConfigError, match="chunk size"):
        EngineConfig(chunk_size=100)
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError, match="delays"):
        RetryPolicy(base_delay=5, max_delay=1)


async def test_a_chunk_never_confirmed_stored_blocks_the_commit(
    tree: Path, sleep: RecordingSleep
) -> None:
    """A put that ends in a stray CancelledError (not a cancel of the job) would end its task
    quietly in a bare TaskGroup: the pool makes it a failure, and nothing is committed."""
    memory = MemoryStorage()
    first = True

    async def vanish_once(key: str) -> None:
        nonlocal first
        if key.startswith("chunks/") and first:
            first = False
            raise asyncio.CancelledError

    engine = BackupEngine(WatchedStorage(memory, on_put=vanish_once), fast_config(), sleep=sleep)
    with pytest.raises(BackupFailed, match="cancelled from within"):
        await engine.backup(tree, name="one")
    assert not any(k.startswith("backups/") for k in memory.objects)


async def test_the_commit_refuses_chunks_never_confirmed_stored(
    tree: Path, sleep: RecordingSleep
) -> None:
    """The last guard of the commit: a job whose bookkeeping lost an upload commits nothing."""

    class ForgetfulJob(BackupJob):
        async def upload(
            self, path: str, digest: str, data: bytes, label: str, held: int = 0
        ) -> None:
            if path != "big.bin":
                await super().upload(path, digest, data, label, held)
            else:
                self.buffers.release(held)  # forgotten, but its buffer is let go

    memory = MemoryStorage()
    engine = BackupEngine(memory, fast_config(), sleep=sleep)
    job = ForgetfulJob(engine._repository("backup"), engine.config, engine.metrics, NoProgress())
    with pytest.raises(IntegrityError, match="4 chunks were never confirmed stored"):
        await job.run(tree, "one")
    assert not any(k.startswith("backups/") for k in memory.objects)


async def test_overwrite_never_follows_a_link_out_of_the_target(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await BackupEngine(store, fast_config(), sleep=sleep).backup(tree, name="one")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "sub").symlink_to(outside)  # planted where the backup has a directory
    with pytest.raises(ManifestError, match="is a link"):
        await BackupEngine(store, fast_config()).restore("one", target, overwrite=True)
    assert list(outside.iterdir()) == []
