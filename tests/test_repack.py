"""Prune of packs (issue 15): unused packs deleted, partly used ones repacked, every INDEX kept
pointing at packs that exist, on the memory store (unit) and on every store (round trip)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, ManifestError, MemoryStorage, RetentionPolicy, Storage
from asyncbackup.errors import ConfigError, IntegrityError
from asyncbackup.layout import index_key, manifest_key, pack_key
from asyncbackup.packs import PackIndex
from asyncbackup.packuse import RepackPolicy
from asyncbackup.prune import PruneReport
from tests.conftest import fast_config
from tests.packed import (
    drop_chunk_objects,
    load_index,
    pack_backup,
    pack_keys,
    unreadable_chunks,
)
from tests.remote import StoreUnderTest

CHUNK = 4096
KEEP_NEWEST = RetentionPolicy(keep_last=1)


def write_files(source: Path, names: list[str], *, seed: int = 0) -> None:
    """One small file (one chunk) per name; a name's bytes depend only on the name and seed."""
    source.mkdir(parents=True, exist_ok=True)
    for name in names:
        rnd = random.Random(f"{seed}:{name}")
        (source / name).write_bytes(rnd.randbytes(CHUNK))


def retarget(source: Path, names: list[str]) -> None:
    """Make ``source`` hold exactly ``names``."""
    for path in source.iterdir():
        if path.name not in names:
            path.unlink()
    write_files(source, names)


def a(n: int) -> list[str]:
    """Names that sort as they count, so a backup's chunks are packed in this order."""
    return [f"a{i:02d}" for i in range(n)]


def b(n: int) -> list[str]:
    return [f"b{i:02d}" for i in range(n)]


def pick(names: list[str], *indices: int) -> list[str]:
    return [names[i] for i in indices]


async def old_and_new(
    store: Storage, source: Path, *, old: list[str], new: list[str], per_pack: int = 10
) -> tuple[BackupEngine, PackIndex, PackIndex]:
    """Backup "old" of ``old`` files, then "new" of ``new`` files from the same source, both
    packed; what "new" shares with "old" stays in old's packs, as an incremental backup's does."""
    engine = BackupEngine(store, fast_config())
    write_files(source, old)
    await engine.backup(source, name="old")
    old_index = await pack_backup(store, "old", per_pack=per_pack)
    retarget(source, new)
    await engine.backup(source, name="new")
    new_index = await pack_backup(store, "new", per_pack=per_pack, known=old_index)
    await drop_chunk_objects(store)
    return engine, old_index, new_index


NEW_PACKS = 2**20
"""The size of the packs a repack writes in these tests, whatever the engine's own."""


async def prune(engine: BackupEngine, **repack: object) -> PruneReport:
    policy = RepackPolicy(**{"pack_size": NEW_PACKS, **repack})  # type: ignore[arg-type]
    return await engine.prune(KEEP_NEWEST, grace=0, repack=policy)


async def test_a_pack_no_kept_backup_uses_is_deleted(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, old, new = await old_and_new(store, tmp_path / "src", old=a(10), new=b(10))
    (old_pack,) = old.pack_sizes
    (new_pack,) = new.pack_sizes
    report = await prune(engine)
    assert await pack_keys(store) == {pack_key(new_pack)}
    assert index_key("old") not in store.objects and manifest_key("old") not in store.objects
    assert (report.packs_deleted, report.packs_repacked, report.packs_in_use) == (1, 0, 1)
    assert report.bytes_packs_deleted == old.pack_sizes[old_pack]
    assert await unreadable_chunks(store) == []
    assert "delete 1 unused pack" in report.summary()


async def test_a_partly_used_pack_is_repacked_and_its_index_rewritten(tmp_path: Path) -> None:
    store = MemoryStorage()
    # "new" keeps 5 of the 10 chunks of old's pack: half of it is unused once "old" goes.
    engine, old, new = await old_and_new(store, tmp_path / "src", old=a(10), new=a(5) + b(10))
    (old_pack,) = old.pack_sizes
    assert old_pack in new.pack_sizes
    report = await prune(engine)
    assert (report.packs_deleted, report.packs_repacked, report.packs_written) == (0, 1, 1)
    packs = await pack_keys(store)
    assert pack_key(old_pack) not in packs and len(packs) == 2
    rewritten = await load_index(store, "new")
    assert set(rewritten.places) == set(new.places)  # the same chunks, ...
    assert old_pack not in {p.pack for p in rewritten.places.values()}  # ... elsewhere
    assert await unreadable_chunks(store) == []
    assert report.bytes_freed_by_packs > 0.4 * old.pack_sizes[old_pack]
    assert "repack 1" in report.summary() and "into 1 new pack" in report.summary()


async def test_the_threshold_decides_and_unlimited_never_repacks(tmp_path: Path) -> None:
    store = MemoryStorage()
    # 19 of the 20 chunks of old's pack stay used: 5% unused, under the default 10%.
    engine, old, _ = await old_and_new(store, tmp_path / "src", old=a(20), new=a(19), per_pack=20)
    (old_pack,) = old.pack_sizes
    assert (await prune(engine)).packs_repacked == 0
    assert (await prune(engine, max_unused=None)).packs_repacked == 0
    assert await pack_keys(store) == {pack_key(old_pack)}
    report = await prune(engine, max_unused=0.02)
    assert report.packs_repacked == 1 and pack_key(old_pack) not in await pack_keys(store)
    assert await unreadable_chunks(store) == []
    # Repacked, the pack holds only live chunks: the next prune leaves it, even at 0%.
    assert (await prune(engine, max_unused=0.0)).packs_repacked == 0


async def test_leftovers_of_several_packs_go_into_one_new_pack(tmp_path: Path) -> None:
    store = MemoryStorage()
    # Four packs of 10; "new" keeps 2 chunks of each: 20% used each.
    engine, old, _ = await old_and_new(
        store, tmp_path / "src", old=a(40), new=pick(a(40), *range(0, 40, 5))
    )
    assert len(old.pack_sizes) == 4
    report = await prune(engine)
    assert (report.packs_repacked, report.packs_written) == (4, 1)
    assert len(await pack_keys(store)) == 1
    assert await unreadable_chunks(store) == []


async def test_max_repack_size_repacks_the_worst_first(tmp_path: Path) -> None:
    store = MemoryStorage()
    # Pack 1 keeps 2 of 10 chunks (80% unused), pack 2 keeps 5 (50% unused).
    engine, _, _ = await old_and_new(
        store, tmp_path / "src", old=a(20), new=pick(a(20), 0, 1, 10, 11, 12, 13, 14)
    )
    report = await prune(engine, max_repack_bytes=3 * CHUNK)  # room for pack 1's 2 chunks
    assert (report.packs_repacked, report.packs_over_cap) == (1, 1)
    assert "left for the next prune by --max-repack-size" in report.summary()
    assert await unreadable_chunks(store) == []
    # The next prune repacks the pack left; the new pack of 2 live chunks wastes nothing.
    assert (await prune(engine)).packs_repacked == 1


async def test_a_dry_run_reports_packs_and_changes_nothing(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, _, _ = await old_and_new(store, tmp_path / "src", old=a(20), new=a(5) + b(10))
    before = dict(store.objects)
    report = await engine.prune(KEEP_NEWEST, grace=0, dry_run=True)
    assert store.objects == before
    assert (report.packs_deleted, report.packs_repacked) == (1, 1)
    line = report.summary()
    assert "would delete 1 unused pack" in line and "would repack 1" in line
    assert "freeing about" in line


async def test_a_pack_no_index_names_goes_only_after_the_grace_period(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, _, _ = await old_and_new(store, tmp_path / "src", old=a(3), new=a(3))
    # What a backup killed after uploading a pack leaves: a pack that no INDEX names.
    await store.put(pack_key("f" * 64), b"written by a backup that crashed")
    report = await engine.prune(KEEP_NEWEST)  # the default grace: 24 h
    assert (report.packs_deleted, report.packs_young) == (0, 1)
    assert "younger than the grace period stay" in report.summary()
    assert (await engine.prune(KEEP_NEWEST, grace=0)).packs_deleted == 1
    assert pack_key("f" * 64) not in store.objects


async def test_a_missing_pack_stops_prune_before_any_delete(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, _, new = await old_and_new(store, tmp_path / "src", old=a(10), new=b(10))
    (new_pack,) = new.pack_sizes
    del store.objects[pack_key(new_pack)]
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=f"{pack_key(new_pack)} is missing.*new"):
        await prune(engine)
    # The removed backup's MANIFEST went (retention), but no pack was deleted.
    assert {k for k in before if k.startswith("packs/")} == await pack_keys(store)


async def test_an_unreadable_index_stops_prune_having_deleted_nothing(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, _, _ = await old_and_new(store, tmp_path / "src", old=a(10), new=a(5))
    store.objects[index_key("new")] = b"not an index"
    before = dict(store.objects)
    with pytest.raises(ManifestError, match=r"prune stopped and deleted nothing.*INDEX.*'new'"):
        await prune(engine)
    assert store.objects == before


async def test_a_corrupt_live_chunk_stops_the_repack_before_any_index_changes(
    tmp_path: Path,
) -> None:
    store = MemoryStorage()
    engine, old, new = await old_and_new(store, tmp_path / "src", old=a(10), new=a(5))
    (old_pack,) = old.pack_sizes
    place = new.places[next(iter(new.places))]
    data = bytearray(store.objects[pack_key(old_pack)])
    data[place.offset] ^= 0xFF
    store.objects[pack_key(old_pack)] = bytes(data)
    index_before = store.objects[index_key("new")]
    with pytest.raises(IntegrityError, match="corrupt"):
        await prune(engine)
    assert store.objects[index_key("new")] == index_before
    assert pack_key(old_pack) in store.objects


def test_bad_repack_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="--max-unused"):
        RepackPolicy(max_unused=1.5)
    with pytest.raises(ConfigError, match="--max-repack-size"):
        RepackPolicy(max_repack_bytes=-1)


async def test_metrics_count_what_prune_did_with_packs(tmp_path: Path) -> None:
    store = MemoryStorage()
    engine, _, _ = await old_and_new(store, tmp_path / "src", old=a(20), new=a(5) + b(10))
    report = await prune(engine)
    sample = engine.metrics.registry.get_sample_value
    for outcome, n in (("deleted", 1), ("repacked", 1), ("written", 1)):
        labels = {"operation": "prune", "kind": "pack", "outcome": outcome}
        assert sample("backup_pruned_objects_total", labels) == n, outcome
    assert report.packs_repacked == 1
    freed = sample("backup_pruned_bytes_total", {"operation": "prune", "outcome": "freed"})
    assert freed == report.bytes_freed_by_packs > 0


async def test_prune_of_packs_round_trip(any_store: StoreUnderTest, tmp_path: Path) -> None:
    async with any_store.store() as store:
        engine, old, _ = await old_and_new(store, tmp_path / "src", old=a(20), new=a(5) + b(10))
        report = await prune(engine)
        assert (report.packs_deleted, report.packs_repacked, report.packs_written) == (1, 1, 1)
        assert not set(old.pack_sizes) & {k.removeprefix("packs/") for k in await pack_keys(store)}
        assert await unreadable_chunks(store) == []
        assert (await prune(engine)).packs_repacked == 0  # nothing left to gain


async def incremental_small_packs(store: Storage, source: Path, count: int) -> BackupEngine:
    """``count`` backups, each adding 3 files: each writes one small pack (as an incremental
    backup of a small change does), every one of them fully used."""
    engine = BackupEngine(store, fast_config())
    known = PackIndex()
    for i in range(count):
        write_files(source, b(3 * count)[3 * i : 3 * i + 3])
        await engine.backup(source, name=f"day{i:02d}")
        known.update(await pack_backup(store, f"day{i:02d}", per_pack=10, known=known))
    await drop_chunk_objects(store)
    return engine


@pytest.mark.parametrize("count", [9, 10])
async def test_ten_small_packs_are_merged_nine_stay(tmp_path: Path, count: int) -> None:
    store = MemoryStorage()
    engine = await incremental_small_packs(store, tmp_path / "src", count)
    before = await pack_keys(store)
    assert len(before) == count
    repack = RepackPolicy(pack_size=NEW_PACKS)
    report = await engine.prune(RetentionPolicy(keep_last=count), grace=0, repack=repack)
    after = await pack_keys(store)
    assert await unreadable_chunks(store) == []
    if count < 10:  # too few to be worth a rewrite
        assert (report.packs_repacked, after) == (0, before)
        return
    assert (report.packs_small, report.packs_repacked, report.packs_written) == (10, 10, 1)
    assert len(after) == 1 and not after & before
    assert "(10 of them small packs merged) into 1 new pack" in report.summary()
    # One small pack is not merged again and again.
    again = await engine.prune(RetentionPolicy(keep_last=count), grace=0, repack=repack)
    assert again.packs_repacked == 0
