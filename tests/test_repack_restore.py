"""Prune of packs with backups the engine packed itself, checked by restoring them: the round
trip on every store, and a restore racing a real prune on the memory store."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, MemoryStorage, RetentionPolicy, Storage
from asyncbackup.prune import PruneReport
from asyncbackup.storage.base import ObjectPage
from tests.conftest import SMALL_CHUNK, assert_same_tree, fast_config
from tests.packed import pack_keys, unreadable_chunks
from tests.remote import StoreUnderTest

KEEP_NEWEST = RetentionPolicy(keep_last=1)
PACKED = fast_config(pack_threshold=SMALL_CHUNK)  # small chunks into packs (tests' default: off)


def small_files(root: Path, names: range, *, seed: int = 0) -> None:
    for i in names:
        directory = root / f"d{i % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:04d}").write_bytes(random.Random(f"{seed}:{i}").randbytes(3000))


def keep_only(root: Path, names: range) -> None:
    wanted = {f"f{i:04d}" for i in names}
    for path in root.rglob("f*"):
        if path.name not in wanted:
            path.unlink()


async def test_packed_backups_pruned_and_repacked_restore_identical(
    any_store: StoreUnderTest, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    small_files(source, range(120))
    async with any_store.store() as store:
        engine = BackupEngine(store, PACKED)
        await engine.backup(source, name="first")
        first_packs = await pack_keys(store)
        assert first_packs, "the backup packed nothing: packs are off?"
        keep_only(source, range(0, 120, 3))  # a third of first's chunks stay in use
        small_files(source, range(200, 230))
        await engine.backup(source, name="second")
        report = await engine.prune(KEEP_NEWEST, grace=0)
        assert report.packs_repacked >= 1 and report.packs_written >= 1
        assert not first_packs & await pack_keys(store)  # repacked, then deleted
        assert await unreadable_chunks(store) == []
        await engine.restore("second", tmp_path / "out")
        assert (await engine.verify("second", deep=True)).ok
    assert_same_tree(source, tmp_path / "out")


class PruneAtFirstPackRead(Storage):
    """A store on which a whole prune runs when a restore first reads a pack: between the
    restore's reading of the INDEX and its read of the pack, as a prune started by cron would."""

    def __init__(self, inner: MemoryStorage, prune: BackupEngine) -> None:
        self.inner = inner
        self.url = inner.url
        self.prune_engine = prune
        self.pruned_before: list[str] = []  # the pack whose read set the prune off
        self.reports: list[PruneReport] = []

    async def _maybe_prune(self, key: str) -> None:
        if key.startswith("packs/") and not self.pruned_before:
            self.pruned_before.append(key)
            self.reports.append(await self.prune_engine.prune(KEEP_NEWEST, grace=0))

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def get(self, key: str) -> bytes:
        await self._maybe_prune(key)
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        await self._maybe_prune(key)
        return await self.inner.get_range(key, start, length)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)


async def test_a_restore_racing_a_real_repack_restores_identical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "src"
    small_files(source, range(90))
    store = MemoryStorage()
    engine = BackupEngine(store, PACKED)
    await engine.backup(source, name="first")
    first_packs = await pack_keys(store)
    keep_only(source, range(0, 90, 3))
    await engine.backup(source, name="second")
    wanted = tmp_path / "wanted"
    shutil.copytree(source, wanted)

    racing = PruneAtFirstPackRead(store, BackupEngine(store, PACKED))
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        await BackupEngine(racing, PACKED).restore("second", tmp_path / "out")
    assert_same_tree(wanted, tmp_path / "out")
    assert racing.reports[0].packs_repacked >= 1
    assert "a pack was missing: read the INDEX of second again" in caplog.text
    # The prune really ran under the restore: the pack it was about to read is gone.
    assert racing.pruned_before and racing.pruned_before[0] in first_packs
    assert racing.pruned_before[0] not in store.objects
