"""Packs end to end (issue 15 item 1): small chunks stored as a few pack objects, large chunks as
objects of their own, on every store (memory, local, S3 on moto, GCS on fake-gcs-server).

Round trip, dedup within and across backups and against older chunk objects, reads whole and by
range, faults in transit, damaged or missing INDEX and packs, a restore racing a repack, and
prune keeping the packs a kept backup uses.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    EngineConfig,
    LocalStorage,
    ManifestError,
    MemoryStorage,
)
from asyncbackup.backup_options import BackupOptions, ChangeDetection
from asyncbackup.compression import Compression
from asyncbackup.config import RetryPolicy
from asyncbackup.layout import index_key, pack_key
from asyncbackup.packread import ChunkSource
from asyncbackup.packs import PackIndex, build_pack, parse_pack
from asyncbackup.retention import RetentionPolicy
from asyncbackup.storage.base import ObjectPage, Storage
from asyncbackup.storage.faulty import Fault as StoreFault
from asyncbackup.storage.faulty import FaultyStorage
from tests.conftest import SMALL_CHUNK, RecordingSleep, assert_same_tree
from tests.proxy import Fault, FaultProxy, first_times
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage, deny

THRESHOLD = 32 * 1024
PACKED = EngineConfig(
    concurrency=4,
    chunk_size=SMALL_CHUNK,
    retry=RetryPolicy(),
    pack_threshold=THRESHOLD,
    pack_size=SMALL_CHUNK,
)
"""Chunks of 64 KiB stay objects; smaller ones go into packs of about 64 KiB."""


def small_tree(root: Path, *, files: int = 60, seed: int = 1) -> Path:
    """``files`` small distinct files (0.5 to 3 KiB), and one file of 3 chunks and a tail."""
    rnd = random.Random(seed)
    for i in range(files):
        directory = root / f"d{i % 6}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:03d}.txt").write_bytes(rnd.randbytes(500 + (i * 41) % 2600))
    (root / "big.bin").write_bytes(rnd.randbytes(3 * SMALL_CHUNK + 700))
    return root


def keys_under(store: MemoryStorage, prefix: str) -> list[str]:
    return sorted(k for k in store.objects if k.startswith(prefix))


def engine(store: Storage, sleep: RecordingSleep, config: EngineConfig = PACKED) -> BackupEngine:
    return BackupEngine(store, config, sleep=sleep)


# Round trip: what lands in the store, and every way of reading it back.


async def test_small_chunks_go_into_packs_and_everything_restores(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src")
    async with any_store.store() as store:
        eng = engine(store, sleep)
        summary = await eng.backup(source, name="b")
        manifest = await eng.manifest("b")
        await eng.restore("b", tmp_path / "out")
        report = await eng.verify("b", deep=True)
        cat = bytearray()

        async def write(data: bytes) -> None:
            cat.extend(data)

        await eng.restore_file("b", "d2/f002.txt", write)
    assert_same_tree(source, tmp_path / "out")
    assert report.ok and report.chunks_checked == manifest.totals.unique_chunks
    assert bytes(cat) == (source / "d2/f002.txt").read_bytes()
    assert manifest.format_version == 4
    chunks = await any_store.keys("c/chunks/")
    packs = await any_store.keys("c/packs/")
    assert len(chunks) == 3  # the big file's three full chunks: objects of their own
    small_bytes = sum(p.stat().st_size for p in source.rglob("*.txt")) + 700
    assert len(packs) == small_bytes // SMALL_CHUNK + 1  # about 64 KiB each, the last less
    assert summary.chunks_uploaded == manifest.totals.unique_chunks == 60 + 4
    backups = await any_store.keys("c/backups/")
    assert [k for k in backups if "/SOURCE." not in k] == [
        "c/backups/b/INDEX",
        "c/backups/b/MANIFEST",
    ]


async def test_one_pack_is_one_put_and_the_index_is_written_before_the_manifest(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src", files=200)
    watched = WatchedStorage(MemoryStorage())
    config = EngineConfig(concurrency=8, chunk_size=SMALL_CHUNK, pack_size=256 * 1024)
    await engine(watched, sleep, config).backup(source, name="b")
    puts = [key for (op, key), n in watched.calls.items() if op == "put" for _ in range(n)]
    packs = [k for k in puts if k.startswith("packs/")]
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert total // (256 * 1024) == 2
    assert len(packs) == len(set(packs)) == 3  # 201 files in 3 PUTs (the last one partly full)
    assert not [k for k in puts if k.startswith("chunks/")]  # default threshold: all packed
    assert watched.stored_at["backups/b/INDEX"] > max(watched.stored_at[k] for k in packs)
    assert watched.stored_at["backups/b/MANIFEST"] > watched.stored_at["backups/b/INDEX"]


async def test_packs_off_stores_one_object_per_chunk(tmp_path: Path, sleep: RecordingSleep) -> None:
    source = small_tree(tmp_path / "src", files=10)
    store = MemoryStorage()
    off = EngineConfig(concurrency=4, chunk_size=SMALL_CHUNK, pack_threshold=0)
    await engine(store, sleep, off).backup(source, name="b")
    assert not keys_under(store, "packs/") and "backups/b/INDEX" not in store.objects
    assert len(keys_under(store, "chunks/")) == 10 + 4
    assert (await engine(store, sleep).manifest("b")).format_version == 3


async def test_compressed_chunks_are_packed_each_on_its_own(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"log{i}.txt").write_bytes(f"line {i} of a log that compresses\n".encode() * 90)
    store = MemoryStorage()
    zstd = EngineConfig(concurrency=4, chunk_size=SMALL_CHUNK, compression=Compression("zstd"))
    await engine(store, sleep, zstd).backup(source, name="b")
    manifest = await engine(store, sleep).manifest("b")
    assert all(c.endswith(".zst") for e in manifest.entries for c in e.chunks)
    (pack,) = keys_under(store, "packs/")
    assert len(store.objects[pack]) < 20 * 3000 / 4  # stored compressed
    await engine(store, sleep).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


# Dedup: within a backup, against its parent, against other backups' INDEXes, and old chunks.


async def test_dedup_across_backups(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src")
    (source / "copy.txt").write_bytes((source / "d1/f001.txt").read_bytes())  # within one
    async with any_store.store() as store:
        eng = engine(store, sleep)
        first = await eng.backup(source, name="one")
        packs_before = await any_store.keys("c/packs/")
        again = await eng.backup(source, name="two")  # incremental: the parent's INDEX
        assert again.chunks_uploaded == 0 and again.parent == "one"
        assert await any_store.keys("c/packs/") == packs_before
        (source / "d3/new.txt").write_bytes(b"a new small file\n")
        changed = await eng.backup(source, name="three")
        assert changed.chunks_uploaded == 1
        assert len(await any_store.keys("c/packs/")) == len(packs_before) + 1
        # A first backup of another source: the newest INDEX of each host and source.
        other = tmp_path / "other"
        shutil.copytree(source, other)
        fresh = await eng.backup(other, name="four")
        assert fresh.parent == "" and fresh.chunks_uploaded == 0
        forced = await engine(store, sleep).backup(
            source, name="five", options=BackupOptions(changes=ChangeDetection(force=True))
        )
        assert forced.chunks_uploaded == 0 and forced.bytes_read > 0
        for name in ("one", "two", "three", "four", "five"):
            await eng.restore(name, tmp_path / name)
    assert first.chunks_skipped == 1
    assert len(await any_store.keys("c/packs/")) == len(packs_before) + 1
    for name in ("three", "four", "five"):
        assert_same_tree(source, tmp_path / name)


async def test_old_chunk_objects_and_packs_share_a_store(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    """A format-3 backup (one object per chunk, as before packs) and packed ones: all restore,
    and a new backup reuses the old chunk objects instead of packing them again."""
    source = small_tree(tmp_path / "src", files=20)
    old_config = EngineConfig(concurrency=4, chunk_size=SMALL_CHUNK, pack_threshold=0)
    async with any_store.store() as store:
        old = await engine(store, sleep, old_config).backup(source, name="old")
        await engine(store, sleep).restore("old", tmp_path / "r-old")
        assert_same_tree(source, tmp_path / "r-old")
        old_chunks = await any_store.keys("c/chunks/")
        (source / "added.txt").write_bytes(b"written after the old backup\n")
        eng = engine(store, sleep)
        incremental = await eng.backup(source, name="new")  # parent: the format-3 backup
        other = tmp_path / "other"
        shutil.copytree(source, other)
        first = await eng.backup(other, name="first")  # a listing of chunks/, no parent
        mixed = await eng.manifest("new")
        await eng.restore("new", tmp_path / "r-new")
        await eng.restore("first", tmp_path / "r-first")
        deep = await eng.verify(None, deep=True)
    assert old.chunks_uploaded == len(old_chunks) == 20 + 4
    assert incremental.parent == "old" and incremental.chunks_uploaded == 1  # the added file
    assert first.chunks_uploaded == 0
    assert mixed.format_version == 4
    index = PackIndex.decode(
        await any_store.read("c/" + index_key("new")), where="INDEX", limit=1 << 20
    )
    assert list(index.places) == [hashlib.sha256(b"written after the old backup\n").hexdigest()]
    assert await any_store.keys("c/chunks/") == old_chunks
    assert deep.ok and deep.backups == ("first", "new", "old")
    assert_same_tree(source, tmp_path / "r-new")
    assert_same_tree(source, tmp_path / "r-first")


# Faults: a pack is one retry unit; one that never lands is never committed.


async def test_a_pack_that_fails_in_transit_is_retried_whole(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """The first two attempts at a pack fail, one before and one after the store took it: the
    pack is sent again whole (one retry each), and the backup restores."""
    source = small_tree(tmp_path / "src")
    faults: list[str] = []

    def rule(operation: str, key: str) -> StoreFault | None:
        if operation == "put" and key.startswith("packs/") and len(faults) < 2:
            faults.append(key)
            return "fail_before" if len(faults) == 1 else "fail_after"
        return None

    store = MemoryStorage()
    faulty = FaultyStorage(store, rule=rule)
    summary = await engine(faulty, sleep).backup(source, name="b")
    assert summary.retries == 2 and len(faults) == 2
    assert faulty.injected == {"fail_before": 1, "fail_after": 1}
    await engine(store, sleep).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_a_pack_that_never_lands_commits_nothing(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src")
    store = MemoryStorage()
    watched = WatchedStorage(store, on_put=deny("packs/"))
    with pytest.raises(BackupFailed, match="access denied to packs/"):
        await engine(watched, sleep).backup(source, name="b")
    assert keys_under(store, "backups/") == [] and keys_under(store, "packs/") == []


@pytest.fixture
async def proxy(remote: StoreUnderTest) -> AsyncIterator[FaultProxy]:
    assert remote.server is not None
    async with FaultProxy(remote.server.port, lambda n, method, path: None) as running:
        yield running


async def test_a_pack_cut_short_on_the_wire_is_sent_again(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep
) -> None:
    """Real servers (moto, fake-gcs-server): the first two pack uploads are cut halfway through
    their body; each is retried whole, the server keeps only complete packs, and a pack that is
    cut every time is never committed."""
    source = small_tree(tmp_path / "src")
    proxy.rule = first_times(2, Fault("cut_request"), method=remote.upload_method, path="packs")
    async with remote.store(proxy) as store:
        summary = await engine(store, sleep).backup(source, name="b")
        await engine(store, sleep).restore("b", tmp_path / "out")
    assert proxy.injected == {"cut_request": 2} and summary.retries == 2
    assert_same_tree(source, tmp_path / "out")
    for key in await remote.keys("c/packs/"):  # every pack whole: its id is its hash
        assert hashlib.sha256(await remote.read(key)).hexdigest() == key.rsplit("/", 1)[1]

    proxy.rule = first_times(100, Fault("cut_request"), method=remote.upload_method, path="packs")
    (source / "d1/changed.txt").write_bytes(b"this one never gets through\n")
    config = EngineConfig(concurrency=4, chunk_size=SMALL_CHUNK, retry=RetryPolicy(max_attempts=3))
    async with remote.store(proxy) as store:
        with pytest.raises(BackupFailed, match="packs/"):
            await engine(store, sleep, config).backup(source, name="never")
    assert await remote.keys("c/backups/never") == []


# Reads: whole packs when most of one is needed, merged ranges otherwise.


async def test_a_full_restore_reads_each_pack_whole_once(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src", files=200)
    store = MemoryStorage()
    await engine(store, sleep).backup(source, name="b")
    watched = WatchedStorage(store)
    await engine(watched, sleep).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
    packs = keys_under(store, "packs/")
    reads = {key: n for (op, key), n in watched.calls.items() if key.startswith("packs/")}
    assert reads == dict.fromkeys(packs, 1)
    assert not [op for (op, key) in watched.calls if op == "get_range" and "packs/" in key]


class RangeLog(WatchedStorage):
    """Also notes each range read: (key, start, length)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.ranges: list[tuple[str, int, int]] = []

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.ranges.append((key, start, length))
        return await super().get_range(key, start, length)


async def test_a_few_chunks_of_a_pack_are_read_by_merged_ranges(
    any_store: StoreUnderTest, sleep: RecordingSleep
) -> None:
    """A pack of eight 300 KiB chunks: reading chunks 0, 1 and 7 takes two range GETs (0 and 1
    merged; 7 more than 1 MiB further), reading 6 of them takes the pack whole, and a chunk
    asked for again after its range was let go is read alone."""
    rnd = random.Random(5)
    raws = [rnd.randbytes(300 * 1024) for _ in range(8)]
    pack = build_pack([(hashlib.sha256(r).hexdigest(), r, len(r)) for r in raws])
    index = PackIndex()
    index.add_pack(pack.pack_id, len(pack.data), pack.chunks)
    refs = [c.ref for c in pack.chunks]
    async with any_store.store() as inner:
        await inner.put(pack_key(pack.pack_id), pack.data)
        store = RangeLog(inner)
        repo = engine(store, sleep)._repository("restore")
        source = ChunkSource(repo, index)
        source.plan([refs[0], refs[1], refs[7]])
        got = [await source.get(refs[i], limit=len(raws[i]), path="f", label="") for i in (0, 1, 7)]
        again = await source.get(refs[0], limit=len(raws[0]), path="f", label="")
        whole = ChunkSource(repo, index)
        whole.plan(refs[:6])
        six = [await whole.get(refs[i], limit=len(raws[i]), path="f", label="") for i in range(6)]
    assert got == [raws[0], raws[1], raws[7]] and again == raws[0] and six == raws[:6]
    c = pack.chunks
    key = pack_key(pack.pack_id)
    assert store.ranges == [
        (key, 0, c[1].offset + c[1].length),
        (key, c[7].offset, c[7].length),
        (key, 0, c[0].length),
    ]
    assert store.calls["get", key] == 1  # the six: one GET of the whole pack


# A damaged INDEX or a missing pack: a clear error, never a wrong byte.


async def test_a_damaged_index_is_caught(
    any_store: StoreUnderTest, tmp_path: Path, sleep: RecordingSleep
) -> None:
    """An INDEX whose places are wrong (each chunk's offset moved to its neighbour's) restores
    nothing wrong: the chunk hashes catch it, no file is left under its final name, and
    ``verify --deep`` names the chunks. An INDEX that is garbage or gone is named as such."""
    source = small_tree(tmp_path / "src", files=20)
    async with any_store.store() as store:
        eng = engine(store, sleep)
        await eng.backup(source, name="b")
        key = "c/" + index_key("b")
        good = await any_store.read(key)
        index = PackIndex.decode(good, where="INDEX", limit=1 << 20)
        shifted = PackIndex()
        for pack_id, chunks in index.by_pack().items():
            for (ref, _), (_, other) in zip(chunks, chunks[1:] + chunks[:1], strict=True):
                shifted.add(ref, other, index.pack_sizes[pack_id])
        await any_store.write(key, shifted.encode("b"))
        with pytest.raises(BackupFailed, match="do not match its hash"):
            await eng.restore("b", tmp_path / "out")
        report = await eng.verify("b", deep=True)
        assert not report.ok and len(report.corrupt) == len(index)
        assert all(
            not p.is_file() or p.name.startswith(".asyncbackup-")
            for p in (tmp_path / "out").rglob("*")
        )

        await any_store.write(key, b"not an index at all")
        with pytest.raises(ManifestError, match=r"backups/b/INDEX is corrupt"):
            await eng.restore("b", tmp_path / "out2")
        async with any_store.store(prefix="") as direct:
            await direct.delete(key)
        with pytest.raises(ManifestError, match=r"backups/b/INDEX is missing"):
            await eng.restore("b", tmp_path / "out3")
        assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
        await any_store.write(key, good)
        await eng.restore("b", tmp_path / "out4")
    assert_same_tree(source, tmp_path / "out4")


async def test_a_missing_pack_is_named_and_repaired_by_the_next_backup(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = small_tree(tmp_path / "src", files=30)
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(source, name="one")
    lost = keys_under(store, "packs/")
    for key in lost:  # deleted behind the protocol's back
        del store.objects[key]
    report = await eng.verify("one")
    assert not report.ok and len(report.missing) == 30 + 1
    assert {f"packs/{p}" for p in report.packs.values()} == set(lost)  # each named with its pack
    assert set(report.packs) == set(report.missing)
    with pytest.raises(BackupFailed, match=r"packs/[0-9a-f]{64}"):
        await eng.restore("one", tmp_path / "out")
    # The next backup's spot check finds the parent's packs missing: it lists the store
    # instead, reads the files whose chunks are gone, and stores them again.
    repaired = await eng.backup(source, name="two")
    assert repaired.chunks_uploaded == 30 + 1 and repaired.unchanged == 0
    await eng.restore("two", tmp_path / "two")
    assert_same_tree(source, tmp_path / "two")
    assert (await eng.verify("two", deep=True)).ok


class Repacking(Storage):
    """A store in which a repack happens exactly when a restore first reads a pack: the chunks
    are written into a new pack (another order), the backup's INDEX is rewritten to the new
    places, and only then is the old pack deleted (prune's order), before the read proceeds."""

    def __init__(self, inner: MemoryStorage, name: str) -> None:
        self.inner = inner
        self.url = inner.url
        self.name = name
        self.repacked: list[str] = []

    async def _repack_once(self, key: str) -> None:
        if not key.startswith("packs/") or self.repacked:
            return
        old_id = key.removeprefix("packs/")
        self.repacked.append(old_id)
        data = self.inner.objects[key]
        chunks = parse_pack(data, where=key)
        moved = build_pack(
            [(c.ref, data[c.offset : c.offset + c.length], c.raw_length) for c in chunks[::-1]]
        )
        await self.inner.put(pack_key(moved.pack_id), moved.data)
        index = PackIndex.decode(self.inner.objects[index_key(self.name)], where="I", limit=1 << 30)
        rewritten = PackIndex()
        for ref, place in index.places.items():
            if place.pack != old_id:
                rewritten.add(ref, place, index.pack_sizes[place.pack])
        rewritten.add_pack(moved.pack_id, len(moved.data), moved.chunks)
        await self.inner.put(index_key(self.name), rewritten.encode(self.name))
        await self.inner.delete(key)

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def get(self, key: str) -> bytes:
        await self._repack_once(key)
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        await self._repack_once(key)
        return await self.inner.get_range(key, start, length)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


async def test_a_restore_racing_a_repack_reads_the_index_again(
    tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    source = small_tree(tmp_path / "src", files=60)
    store = MemoryStorage()
    await engine(store, sleep).backup(source, name="b")
    racing = Repacking(store, "b")
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        await engine(racing, sleep).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
    assert len(racing.repacked) == 1 and pack_key(racing.repacked[0]) not in store.objects
    assert "a pack was missing: read the INDEX of b again" in caplog.text


async def test_prune_keeps_the_packs_a_kept_backup_uses(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """A prune that forgets the parent keeps every pack the kept backup's INDEX names (here
    each is still mostly used, under --max-unused: none is repacked), and the kept backup
    restores. Prune of packs itself is tested in test_repack*.py."""
    source = small_tree(tmp_path / "src", files=20)
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(source, name="one")
    (source / "d0/f000.txt").write_bytes(b"changed\n")
    await eng.backup(source, name="two")
    packs = keys_under(store, "packs/")
    report = await eng.prune(RetentionPolicy(keep_last=1), grace=0)
    assert [d.name for d in report.removed] == ["one"]
    assert keys_under(store, "packs/") == packs
    await eng.restore("two", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_a_local_backup_of_many_small_files_writes_a_few_files(tmp_path: Path) -> None:
    """2,000 small files: one pack file, its INDEX and MANIFEST, not 2,000 files and fsyncs."""
    source = tmp_path / "src"
    rnd = random.Random(3)
    for i in range(2000):
        directory = source / f"d{i % 20}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{i}.txt").write_bytes(rnd.randbytes(rnd.randrange(100, 2000)))
    fsyncs: list[int] = []

    def count_fsync(fd: int) -> None:
        fsyncs.append(fd)

    root = tmp_path / "store"
    store = LocalStorage(root, fsync_dir=count_fsync)
    summary = await BackupEngine(store).backup(source, name="b")
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert summary.files == 2000 and summary.chunks_uploaded == 2000
    # Each object is one file written and fsynced (local.py), so these are all the fsyncs of
    # files: one pack, the INDEX, the MANIFEST, the backup's source mark and the store's marker.
    assert written == [
        "asyncbackup-store",
        "backups/b/INDEX",
        "backups/b/MANIFEST",
        *[w for w in written if w.startswith("backups/b/SOURCE.")],
        *[w for w in written if w.startswith("packs/")],
    ]
    assert len([w for w in written if w.startswith("packs/")]) == 1
    assert len(fsyncs) < 10  # the directories, once each
    await BackupEngine(LocalStorage(root)).restore("b", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_packs_off_after_a_packed_parent_names_chunk_objects_only(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """``--pack-threshold 0`` means one object per chunk, as before packs: a backup whose
    parent is packed reads again the files whose chunks lie in packs, and writes no INDEX."""
    source = small_tree(tmp_path / "src", files=10)
    store = MemoryStorage()
    await engine(store, sleep).backup(source, name="packed")
    off = EngineConfig(concurrency=4, chunk_size=SMALL_CHUNK, pack_threshold=0)
    summary = await engine(store, sleep, off).backup(source, name="objects")
    manifest = await engine(store, sleep).manifest("objects")
    # Every file has a packed chunk (big.bin its tail), so each is read again; big.bin's three
    # full chunks are objects already and are reused.
    assert summary.parent == "packed" and summary.unchanged == 0
    assert summary.chunks_uploaded == 10 + 1 and summary.chunks_skipped == 3
    assert manifest.format_version == 3 and index_key("objects") not in store.objects
    assert {f"chunks/{r}" for r in manifest.refs()} <= set(store.objects)
    await engine(store, sleep).restore("objects", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
