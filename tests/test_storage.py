"""The stores themselves: local atomicity and key safety, URL parsing, fault injection."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from asyncbackup import (
    ConfigError,
    FaultyStorage,
    LocalStorage,
    MemoryStorage,
    ObjectExistsError,
    ObjectNotFoundError,
    TransientStorageError,
    open_storage,
)
from asyncbackup.chunking import ChunkReader
from tests.conftest import SMALL_CHUNK
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage


async def test_local_put_get_list_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "s")
    await store.put("chunks/aa", b"one")
    await store.put("backups/x/MANIFEST", b"two")
    await store.put("chunks/aa", b"one")  # overwriting with the same bytes is fine
    assert await store.get("chunks/aa") == b"one"
    assert (await store.list_page("chunks/")) == (["chunks/aa"], None)
    assert (await store.list_page("backups/")) == (["backups/x/MANIFEST"], None)
    assert (await store.list_page("backups/y/")) == ([], None)
    await store.delete("backups/x/MANIFEST")
    await store.delete("backups/x/MANIFEST")  # deleting what is gone is not an error
    assert not (tmp_path / "s" / "backups" / "x").exists()  # no empty directories left
    with pytest.raises(ObjectNotFoundError, match="chunks/bb"):
        await store.get("chunks/bb")


async def test_local_listing_gives_each_objects_size_and_mtime(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("chunks/three", b"abc")
    await store.put("chunks/empty", b"")
    os.utime(tmp_path / "chunks" / "three", (1_000_000_000, 1_000_000_000))
    objects, token = await store.list_objects("chunks/")
    assert token is None
    assert [(o.key, o.size) for o in objects] == [("chunks/empty", 0), ("chunks/three", 3)]
    assert objects[1].modified == 1_000_000_000
    assert abs(objects[0].modified - time.time()) < 60


async def test_memory_listing_stamps_each_put_with_its_clock() -> None:
    now = [100.0]
    store = MemoryStorage(clock=lambda: now[0], page_size=1)
    await store.put("a", b"12")
    now[0] = 200.0
    await store.put("b", b"")
    first, token = await store.list_objects("")
    second, last = await store.list_objects("", token)
    assert [(o.key, o.size, o.modified) for o in first + second] == [
        ("a", 2, 100.0),
        ("b", 0, 200.0),
    ]
    assert last is None
    await store.put("a", b"1")  # a put again makes it young again
    assert (await store.list_objects("a"))[0][0].modified == 200.0


async def test_local_create_only_put_keeps_the_first(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("k", b"first", overwrite=False)
    with pytest.raises(ObjectExistsError):
        await store.put("k", b"second", overwrite=False)
    assert await store.get("k") == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # the temporary file is gone


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", ".tmp-1", "a/."])
async def test_local_keys_cannot_escape_or_shadow(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path / "s")
    with pytest.raises(ConfigError, match="invalid key"):
        await store.put(key, b"x")
    assert not (tmp_path / "x").exists()


async def test_local_listing_skips_temporary_files_left_by_a_crash(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    await store.put("chunks/aa", b"x")
    (tmp_path / "chunks" / ".tmp-0123456789abcdef").write_bytes(b"half")
    assert (await store.list_page("chunks/"))[0] == ["chunks/aa"]


async def test_cancelled_local_puts_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    tasks = [asyncio.create_task(store.put(f"k{i}", b"x" * 100_000)) for i in range(50)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.3)  # threads that had started finish, and rename or remove
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if n.startswith(".")]
    for name in names:  # whatever landed, landed whole
        assert (tmp_path / name).read_bytes() == b"x" * 100_000


async def test_sync_fsyncs_the_directories_written(tmp_path: Path) -> None:
    synced: list[tuple[int, int]] = []  # (device, inode) of each directory fsynced

    def fsync_dir(fd: int) -> None:
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode)
        synced.append((st.st_dev, st.st_ino))
        os.fsync(fd)

    def identity(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_dev, st.st_ino

    store = LocalStorage(tmp_path, fsync_dir=fsync_dir)
    await store.put("chunks/a", b"x")
    await store.put("chunks/b", b"y")
    await store.put("backups/one/MANIFEST", b"{}")
    assert synced == []  # a put fsyncs its file; the directories wait for the sync
    await store.sync()
    # Each directory written, once; and each that holds a directory made by a put, or the new
    # directory's name could be lost in a crash, and every object in it with it.
    written = {identity(tmp_path / p) for p in ("chunks", "backups/one", "backups", ".")}
    assert sorted(synced) == sorted(written)
    await store.sync()
    assert len(synced) == 4  # nothing written since: nothing to sync
    await store.put("chunks/c", b"z")
    await store.sync()
    assert synced[4:] == [identity(tmp_path / "chunks")]


def test_local_store_on_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        LocalStorage(tmp_path / "f")


def test_open_storage_picks_the_store_from_the_url(tmp_path: Path) -> None:
    local = open_storage(str(tmp_path / "a"))
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "a"
    by_url = open_storage(f"file://{tmp_path}/b%20c")
    assert isinstance(by_url, LocalStorage) and by_url.root == tmp_path / "b c"
    assert isinstance(open_storage("memory://x"), MemoryStorage)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://host/x", "unknown store scheme 'ftp'"),
        ("file://otherhost/x", "names a local path"),
        ("s3:///prefix", "no bucket"),
        ("gs://", "no bucket"),
        ("s3://bucket/a//b", "empty, '.' or '..' part"),
        ("gs://bucket/a/../b", "empty, '.' or '..' part"),
        ("s3://bucket/x?versionId=1", "no query"),
    ],
)
def test_open_storage_refuses_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(url)


async def test_faults_are_seeded_and_counted() -> None:
    async def run(seed: int) -> list[bool]:
        store = FaultyStorage(MemoryStorage(), rate=0.3, seed=seed)
        outcomes = []
        for i in range(200):
            try:
                await store.put(f"k{i}", b"x")
                outcomes.append(True)
            except TransientStorageError:
                outcomes.append(False)
        assert sum(store.injected.values()) == outcomes.count(False)
        return outcomes

    first, again, other = await run(1), await run(1), await run(2)
    assert first == again and first != other
    assert 30 < first.count(False) < 90


async def test_fault_draws_do_not_depend_on_the_order_of_calls() -> None:
    async def failing_keys(order: list[int]) -> set[str]:
        store = FaultyStorage(MemoryStorage(), rate=0.5, seed=9)
        failed = set()
        for i in order:
            try:
                await store.put(f"k{i}", b"x")
            except TransientStorageError:
                failed.add(f"k{i}")
        return failed

    forward = await failing_keys(list(range(100)))
    assert forward == await failing_keys(list(reversed(range(100))))
    assert 25 < len(forward) < 75


async def test_fault_draws_of_lock_objects_do_not_depend_on_their_random_names() -> None:
    """A lock's key is new in every run; a seeded run must still repeat exactly."""

    async def outcomes() -> list[bool]:
        store = FaultyStorage(MemoryStorage(), rate=0.5, seed=3)
        seen = []
        for _ in range(40):
            key = f"locks/{os.urandom(16).hex()}"
            try:
                await store.put(key, b"{}")
                seen.append(True)
            except TransientStorageError:
                seen.append(False)
        return seen

    first = await outcomes()
    assert first == await outcomes()
    assert 8 < first.count(False) < 32


async def test_a_fault_after_the_operation_took_effect() -> None:
    memory = MemoryStorage()
    store = FaultyStorage(memory, rate=1.0, after_share=1.0)
    with pytest.raises(TransientStorageError, match="after put"):
        await store.put("k", b"stored anyway")
    assert memory.objects["k"] == b"stored anyway"
    before = FaultyStorage(memory, rate=1.0, after_share=0.0)
    with pytest.raises(TransientStorageError, match="before put"):
        await before.put("j", b"never stored")
    assert "j" not in memory.objects


async def test_a_range_read_through_faults_reads_only_the_range_and_draws_as_a_get() -> None:
    memory = WatchedStorage(MemoryStorage())
    await memory.put("packs/p", bytes(range(256)) * 4096)  # 1 MiB
    store = FaultyStorage(memory, rate=0.5, seed=5)
    outcomes = []
    for _ in range(40):
        try:
            assert await store.get_range("packs/p", 1000, 10) == bytes(range(232, 242))
            outcomes.append(True)
        except TransientStorageError as exc:
            assert "get packs/p" in str(exc)  # drawn, and named, as a get
            outcomes.append(False)
    assert memory.calls["get", "packs/p"] == 0  # never the whole object
    assert 0 < memory.calls["get_range", "packs/p"] <= 40
    # The same draws as the whole-object reads of the same key: a seeded run repeats.
    same = FaultyStorage(MemoryStorage(), rate=0.5, seed=5)
    await same.inner.put("packs/p", b"x")
    expected = []
    for _ in range(40):
        try:
            await same.get("packs/p")
            expected.append(True)
        except TransientStorageError:
            expected.append(False)
    assert outcomes == expected and False in outcomes and True in outcomes


async def test_a_hang_lasts_until_the_caller_gives_up() -> None:
    store = FaultyStorage(MemoryStorage(), hang_rate=1.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await store.get("k")
    assert store.injected["hang"] == 1


async def test_latency_is_added_through_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    store = FaultyStorage(MemoryStorage(), latency=0.02, sleep=sleep)
    await store.put("k", b"x")
    await store.get("k")
    assert slept == [0.02, 0.02]


def test_fault_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        FaultyStorage(MemoryStorage(), rate=1.5)
    with pytest.raises(ConfigError, match="latency"):
        FaultyStorage(MemoryStorage(), latency=-1)


@pytest.mark.parametrize(
    "size", [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, 2 * SMALL_CHUNK, 3 * SMALL_CHUNK + 7]
)
async def test_chunk_reader_hashes_chunks_and_the_whole_file(tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    (tmp_path / "f").write_bytes(content)
    reader = ChunkReader(tmp_path / "f", SMALL_CHUNK)
    chunks = []
    while (chunk := await reader.next_chunk()) is not None:
        chunks.append(chunk)
    await reader.aclose()
    assert b"".join(data for data, _ in chunks) == content
    assert all(digest == hashlib.sha256(data).hexdigest() for data, digest in chunks)
    assert len(chunks) == -(-size // SMALL_CHUNK)
    assert reader.sha256 == hashlib.sha256(content).hexdigest() and reader.size == size


async def test_s3_and_gcs_listings_give_each_objects_size_and_time(remote: StoreUnderTest) -> None:
    async with remote.store() as store:
        before = time.time()
        await store.put("chunks/three", b"abc")
        await store.put("chunks/empty", b"")
        after = time.time()
        objects, token = await store.list_objects("chunks/")
    assert token is None
    assert [(o.key, o.size) for o in objects] == [("chunks/empty", 0), ("chunks/three", 3)]
    for o in objects:  # S3's LastModified has whole seconds; the servers' clock is this machine's
        assert before - 2 <= o.modified <= after + 2
