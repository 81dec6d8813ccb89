"""A large file's chunks streamed to their place, on every store (local, moto, fake-gcs-server).

The bytes restored are the bytes backed up, raw and compressed; a chunk damaged or cut short on
the way is caught by its hash or its length and downloaded again, once, and the file is placed
whole; the same wrong bytes twice fail the restore and leave no half file.

Chunks here are small (so tests stay fast) but stand for large ones: packs are off
(``pack_threshold=0``), so each is an object of its own, as a large chunk is.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    EngineConfig,
    IntegrityError,
    ObjectNotFoundError,
    Storage,
)
from asyncbackup.compression import Compression
from asyncbackup.layout import chunk_key
from tests.conftest import RecordingSleep, assert_same_tree
from tests.proxy import Fault, FaultProxy, first_times
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage

KiB = 1024
CHUNK = 256 * KiB
# Pieces of a stream are 1 MiB at most, blocks are gathered to 1 MiB: a chunk of several MiB
# crosses both, so the test covers a block boundary inside a chunk.
BIG_CHUNK = 3 * 1024 * KiB + 5


def source(root: Path, *, size: int, seed: int = 5) -> Path:
    """One large file of random bytes (incompressible) and one of text (compressible)."""
    rnd = random.Random(seed)
    root.mkdir()
    (root / "random.bin").write_bytes(rnd.randbytes(size))
    words = [rnd.choice([b"alpha ", b"beta ", b"gamma\n", b"delta "]) for _ in range(size // 6)]
    (root / "text.log").write_bytes(b"".join(words))
    return root


class FlipOnce(WatchedStorage):
    """A local store whose first stream of ``key`` has one byte flipped: what the proxy does to
    an HTTP answer, for the store that has no wire."""

    def __init__(self, inner: Storage, key: str) -> None:
        super().__init__(inner)
        self.key = key
        self.flipped = 0

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        data = await self.inner.get(key)
        if key == self.key and not self.flipped:
            self.flipped += 1
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF
            data = bytes(damaged)
        yield data


@pytest.mark.parametrize("codec", ["none", "zstd", "gzip"])
async def test_a_large_file_streams_back_identical(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep, codec: str
) -> None:
    tree = source(tmp_path / "source", size=5 * CHUNK + 1234)
    config = EngineConfig(
        concurrency=4,
        chunk_size=CHUNK,
        compression=Compression(codec),  # type: ignore[arg-type]
        pack_threshold=0,
    )
    async with any_store.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        backup = await engine.backup(tree, name="b")
        restore = await engine.restore("b", tmp_path / "restored")
    assert_same_tree(tree, tmp_path / "restored")
    assert restore.chunks_downloaded == backup.chunks_uploaded >= 10
    assert restore.retries == 0 and sleep.calls == []


async def test_chunks_of_several_mib_cross_block_and_piece_boundaries(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    tree = source(tmp_path / "source", size=2 * BIG_CHUNK + 99)
    config = EngineConfig(concurrency=4, chunk_size=BIG_CHUNK - 5, pack_threshold=0)
    async with any_store.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        await engine.backup(tree, name="b")
        await engine.restore("b", tmp_path / "restored")
    assert_same_tree(tree, tmp_path / "restored")


async def first_chunk_of(engine: BackupEngine, path: str, index: int = 1) -> str:
    [entry] = [e for e in (await engine.manifest("b")).entries if e.path == path]
    return entry.chunks[index]


async def test_a_chunk_damaged_in_transit_is_caught_and_downloaded_again(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    tree = source(tmp_path / "source", size=5 * CHUNK + 1234)
    config = EngineConfig(concurrency=4, chunk_size=CHUNK, pack_threshold=0)
    async with any_store.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        await engine.backup(tree, name="b")
        ref = await first_chunk_of(engine, "random.bin")
    key = chunk_key(ref)
    proxy: FaultProxy | None = None
    if any_store.kind == "local":
        flipping = FlipOnce(any_store.store(), key)
        restored = await BackupEngine(flipping, config, sleep=sleep).restore("b", tmp_path / "r")
        await flipping.aclose()
        assert flipping.flipped == 1
    else:
        assert any_store.server is not None
        rule = first_times(1, Fault("flip_body"), method="GET", path=any_store.download_of(key))
        async with (
            FaultProxy(any_store.server.port, rule) as proxy,
            any_store.store(proxy) as through,
        ):
            engine = BackupEngine(through, config, sleep=sleep)
            restored = await engine.restore("b", tmp_path / "r")
        assert proxy.injected["flip_body"] == 1
    assert restored.retries == 1 and len(sleep.calls) == 1
    assert_same_tree(tree, tmp_path / "r")


async def test_a_chunk_cut_short_in_transit_is_downloaded_again(
    remote: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    tree = source(tmp_path / "source", size=5 * CHUNK + 1234)
    config = EngineConfig(concurrency=4, chunk_size=CHUNK, pack_threshold=0)
    async with remote.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        await engine.backup(tree, name="b")
        key = chunk_key(await first_chunk_of(engine, "random.bin", index=3))
    assert remote.server is not None
    rule = first_times(1, Fault("cut_body"), method="GET", path=remote.download_of(key))
    async with FaultProxy(remote.server.port, rule) as proxy, remote.store(proxy) as through:
        restored = await BackupEngine(through, config, sleep=sleep).restore("b", tmp_path / "r")
    assert proxy.injected["cut_body"] == 1
    assert restored.retries == 1
    assert_same_tree(tree, tmp_path / "r")


async def test_the_same_wrong_bytes_twice_fail_the_restore_and_leave_no_half_file(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    tree = source(tmp_path / "source", size=5 * CHUNK + 1234)
    config = EngineConfig(
        concurrency=4, chunk_size=CHUNK, compression=Compression("zstd"), pack_threshold=0
    )
    async with any_store.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        await engine.backup(tree, name="b")
        ref = await first_chunk_of(engine, "text.log", index=2)
    stored = bytearray(await any_store.read(f"c/{chunk_key(ref)}"))
    stored[len(stored) // 2] ^= 0x01  # rotten at rest: every download brings the same bytes
    await any_store.write(f"c/{chunk_key(ref)}", bytes(stored))
    target = tmp_path / "target"
    async with any_store.store() as store:
        with pytest.raises(BackupFailed) as caught:
            await BackupEngine(store, config, sleep=sleep).restore("b", target)
    [failure] = caught.value.failures
    assert failure.path == "text.log" and isinstance(failure.error, IntegrityError)
    assert f"chunk chunks/{ref} of text.log is corrupt in" in str(failure.error)
    assert len(sleep.calls) == 1  # downloaded twice, not ten times
    assert not (target / "text.log").exists()
    assert not [p for p in target.rglob("*") if p.name.startswith(".asyncbackup-")]


async def test_a_missing_chunk_of_a_large_file_fails_at_once_and_leaves_no_half_file(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    tree = source(tmp_path / "source", size=5 * CHUNK + 1234)
    config = EngineConfig(concurrency=4, chunk_size=CHUNK, pack_threshold=0)
    async with any_store.store() as store:
        engine = BackupEngine(store, config, sleep=sleep)
        await engine.backup(tree, name="b")
        ref = await first_chunk_of(engine, "random.bin", index=4)
        await store.delete(chunk_key(ref))  # behind the repository's back
    target = tmp_path / "target"
    async with any_store.store() as store:
        with pytest.raises(BackupFailed) as caught:
            await BackupEngine(store, config, sleep=sleep).restore("b", target)
    [failure] = caught.value.failures
    assert failure.path == "random.bin" and isinstance(failure.error, ObjectNotFoundError)
    assert ref in str(failure.error)
    assert sleep.calls == []  # a missing object is permanent: not retried
    assert not (target / "random.bin").exists()
    assert not [p for p in target.rglob("*") if p.name.startswith(".asyncbackup-")]
