"""Prune removes the source marks of the backups it removes, after their MANIFEST and INDEX, and
the marks a crash between the two left without a MANIFEST; the parent search stays right."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbackup import BackupEngine, BackupFailed, MemoryStorage, RetentionPolicy, Storage
from asyncbackup.layout import index_key, manifest_key
from tests.conftest import RecordingSleep, assert_same_tree, fast_config, make_tree
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage, deny

PACKED = 1 << 20  # small files go into packs, so each backup has an INDEX as well
KEEP_NEWEST = RetentionPolicy(keep_last=1)  # of each host and source


def engine(store: Storage, sleep: RecordingSleep | None = None) -> BackupEngine:
    if sleep is None:
        return BackupEngine(store, fast_config(pack_threshold=PACKED))
    return BackupEngine(store, fast_config(pack_threshold=PACKED), sleep=sleep)


def is_mark(key: str) -> bool:
    return "/SOURCE." in key


def heads_read(watched: WatchedStorage) -> set[str]:
    """The MANIFESTs a job read, whole or by their head."""
    return {k for (op, k) in watched.calls if op in ("get", "get_range") and "MANIFEST" in k}


async def test_nothing_of_a_pruned_backup_is_left_and_the_next_backup_finds_its_parent(
    any_store: StoreUnderTest, tmp_path: Path
) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", seed=1)
    async with any_store.store() as store:
        eng = engine(store)
        for name, source in (("a1", a), ("b1", b), ("a2", a)):
            await eng.backup(source, name=name)
        before = await any_store.keys("c/backups/a1/")
        assert sorted(k.rsplit("/", 1)[1].split(".")[0] for k in before) == [
            "INDEX",
            "MANIFEST",
            "SOURCE",
        ]

        report = await eng.prune(KEEP_NEWEST, grace=0)
        assert [d.name for d in report.removed] == ["a1"]
        assert await any_store.keys("c/backups/a1/") == []  # MANIFEST, INDEX and mark
        for kept in ("a2", "b1"):
            assert len(await any_store.keys(f"c/backups/{kept}/")) == 3
        assert "source mark" not in report.summary()  # none was left without its backup

        watched = WatchedStorage(store)
        (tmp_path / "a" / "new.txt").write_bytes(b"a file the parent does not have")
        third = await engine(watched).backup(a, name="a3")
        assert (third.parent, third.unchanged) == ("a2", 13)
        assert heads_read(watched) == {manifest_key("a2")}
        await eng.restore("a3", tmp_path / "out")
        assert_same_tree(a, tmp_path / "out")


async def test_marks_go_after_the_manifest_and_index_and_a_crash_between_costs_nothing(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """The order the docs argue (docs/design.md, "Source marks and prune"): MANIFEST, then
    INDEX, then mark. A prune that dies before the mark leaves a mark without a MANIFEST: the
    next backup passes over it without reading anything of it, and the next prune removes it."""
    a = make_tree(tmp_path / "a")
    memory = MemoryStorage()
    for name in ("a1", "a2"):
        await engine(memory, sleep).backup(a, name=name)
    # A mark of no backup, of the same source and newer than any: left by a prune of an
    # earlier version, which left marks behind, with its backup's name since reused elsewhere.
    ghost = f"backups/ghost/SOURCE.{mark_group(memory, 'a2')}.99991231235959"
    memory.objects[ghost] = b""

    dying = WatchedStorage(memory, on_delete=deny("/SOURCE."))
    with pytest.raises(BackupFailed, match="SOURCE"):
        await engine(dying, sleep).prune(KEEP_NEWEST, grace=0)
    deleted = [k for kind, k in dying.events if kind == "deleted" and k.startswith("backups/")]
    assert deleted == [manifest_key("a1"), index_key("a1")]  # the mark would have come next
    [left] = [k for k in memory.objects if k.startswith("backups/a1/")]
    assert is_mark(left)

    watched = WatchedStorage(memory)
    assert (await engine(watched, sleep).backup(a, name="a3")).parent == "a2"
    assert heads_read(watched) == {manifest_key("a2")}  # neither a1's mark nor ghost's read

    report = await engine(memory, sleep).prune(KEEP_NEWEST, grace=0, dry_run=True)
    assert "would remove 2 source marks of no backup" in report.summary()
    assert left in memory.objects and ghost in memory.objects  # a dry run deletes nothing
    report = await engine(memory, sleep).prune(KEEP_NEWEST, grace=0)
    assert [d.name for d in report.removed] == ["a2"]
    assert "removed 2 source marks of no backup" in report.summary()
    assert sorted(k.split("/")[1] for k in memory.objects if k.startswith("backups/")) == [
        "a3",
        "a3",
        "a3",
    ]


def mark_group(store: MemoryStorage, name: str) -> str:
    """The source group in backup ``name``'s mark."""
    [mark] = [k for k in store.objects if k.startswith(f"backups/{name}/") and is_mark(k)]
    return mark.rsplit("/", 1)[1].split(".")[1]
