"""Incremental backups: files unchanged since the parent are not opened, changed ones are read
(ctime and inode catch what size and mtime miss), and a damaged parent is not trusted blindly."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from asyncbackup import (
    BackupEngine,
    BackupOptions,
    ChangeDetection,
    ConfigError,
    Filters,
    MemoryStorage,
    Metrics,
    chunking,
    threads,
)
from asyncbackup import parent as parent_module
from asyncbackup.layout import chunk_key, manifest_key
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.manifest_encoding import ZSTD_MAGIC, decode
from asyncbackup.parent import ENTRIES_PER_TRIP, SPOT_CHECKS, Parent
from tests.conftest import RecordingSleep, assert_same_tree, fast_config, make_tree
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The source files each backup opens, by name: counted at the one seam that opens them."""
    counts: Counter[str] = Counter()
    real = chunking.open_source

    def counting(path: Path, opener: chunking.Opener | None = None) -> int:
        counts[os.fsdecode(path)] += 1
        return real(path, opener)

    monkeypatch.setattr(chunking, "open_source", counting)
    return counts


def engine(
    store: MemoryStorage | WatchedStorage, sleep: RecordingSleep, **kw: object
) -> BackupEngine:
    return BackupEngine(store, fast_config(), sleep=sleep, **kw)  # type: ignore[arg-type]


async def test_an_unchanged_file_is_not_opened(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    store = MemoryStorage()
    first = await engine(store, sleep).backup(tree, name="one")
    files = sum(opened.values())
    assert files == first.files == 13 and first.unchanged == 0 and first.parent == ""
    opened.clear()

    registry = CollectorRegistry()
    second = await engine(store, sleep, metrics=Metrics(registry)).backup(tree, name="two")
    assert opened == Counter()  # not one file opened
    assert (second.parent, second.unchanged, second.files) == ("one", 13, 13)
    assert second.bytes_read == 0 and second.chunks_uploaded == 0
    unchanged = registry.get_sample_value(
        "backup_files_total", {"operation": "backup", "outcome": "unchanged"}
    )
    assert unchanged == 13
    manifest = await BackupEngine(store).manifest("two")
    assert manifest.parent == "one"
    await engine(store, sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")

    (tree / "sub" / "deeper" / "leaf.txt").write_text("leaf, grown\n")
    (tree / "new.txt").write_text("new\n")
    third = await engine(store, sleep).backup(tree, name="three")
    assert sorted(opened) == [str(tree / "new.txt"), str(tree / "sub/deeper/leaf.txt")]
    assert (third.parent, third.unchanged, third.chunks_uploaded) == ("two", 12, 2)
    await engine(store, sleep).restore("three", tmp_path / "out3")
    assert_same_tree(tree, tmp_path / "out3")


async def test_content_changed_with_its_mtime_put_back_is_read_because_its_ctime_moved(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    target = tree / "dup-a.bin"
    before = target.stat()
    target.write_bytes(b"other byte" * 1000)  # same size, new content
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -d` does
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns  # only the kernel sets it
    opened.clear()

    second = await engine(store, sleep).backup(tree, name="two")
    assert list(opened) == [str(target)] and second.unchanged == 12
    await engine(store, sleep).restore("two", tmp_path / "out")
    assert (tmp_path / "out" / "dup-a.bin").read_bytes() == b"other byte" * 1000
    assert_same_tree(tree, tmp_path / "out")

    # --ignore-ctime trusts size and mtime alone: the file is taken as unchanged (the trade-off
    # that option makes, for file systems whose ctime is not stable).
    target.write_bytes(b"third text" * 1000)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    opened.clear()
    careless = ChangeDetection(ignore_ctime=True)
    third = await engine(store, sleep).backup(
        tree, name="three", options=BackupOptions(changes=careless)
    )
    assert opened == Counter() and third.unchanged == 13


async def test_a_file_replaced_by_another_inode_is_read_unless_inodes_are_ignored(
    tree: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    target = tree / "private"
    old = target.stat()
    replacement = tree / "private.new"
    replacement.write_bytes(target.read_bytes())
    os.chmod(replacement, 0o600)
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, target)  # an upgrade's "write beside, rename over"
    assert target.stat().st_ino != old.st_ino
    opened.clear()

    ignore_both = ChangeDetection(ignore_inode=True, ignore_ctime=True)
    blind = await engine(store, sleep).backup(
        tree, name="two", options=BackupOptions(changes=ignore_both)
    )
    assert opened == Counter() and blind.unchanged == 13
    ignore_ctime = ChangeDetection(ignore_ctime=True)
    # Compared with "one" (the blind "two" recorded the new inode already).
    seen = await engine(store, sleep).backup(
        tree, name="three", options=BackupOptions(parent="one", changes=ignore_ctime)
    )
    assert list(opened) == [str(target)] and seen.unchanged == 12


async def test_force_reads_every_file_and_lists_the_store(
    tree: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    memory = MemoryStorage()
    await engine(memory, sleep).backup(tree, name="one")
    opened.clear()
    watched = WatchedStorage(memory)
    forced = await engine(watched, sleep).backup(
        tree, name="two", options=BackupOptions(changes=ChangeDetection(force=True))
    )
    assert sum(opened.values()) == 13 and forced.unchanged == 0 and forced.parent == ""
    assert forced.chunks_uploaded == 0  # the listing showed every chunk stored
    assert watched.calls["list", "chunks/"] == 1  # the one listing


async def test_an_incremental_backup_does_not_list_the_chunks_before_it_reads(
    tree: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage(page_size=3)
    first = WatchedStorage(memory)
    await engine(first, sleep).backup(tree, name="one")
    second = WatchedStorage(memory)
    await engine(second, sleep).backup(tree, name="two")
    # What it may trust comes from the parent's MANIFEST (under the repository lock): it lists
    # no chunk, where the first backup listed the (empty) store.
    assert first.calls["list", "chunks/"] == 1
    assert second.calls["list", "chunks/"] == 0
    assert second.calls["get", manifest_key("one")] == 1  # the parent, read once


async def test_a_missing_chunk_of_the_parent_is_uploaded_again(
    tree: Path,
    tmp_path: Path,
    sleep: RecordingSleep,
    opened: Counter[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The parent's chunks are spot-checked before they are trusted; one missing means a
    listing, and the file whose chunk is gone is read again and stored."""
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    parent = await BackupEngine(store).manifest("one")
    [leaf] = [e for e in parent.entries if e.path == "sub/deeper/leaf.txt"]
    del store.objects[chunk_key(leaf.chunks[0])]  # damaged behind the protocol's back
    opened.clear()

    second = await engine(store, sleep).backup(tree, name="two")
    assert f"chunks of the parent one checked are missing from the store ({leaf.chunks[0]})" in (
        caplog.text
    )
    assert second.unchanged == 12
    assert chunk_key(leaf.chunks[0]) in store.objects  # read again from the source, stored
    assert list(opened) == [str(tree / "sub/deeper/leaf.txt")]
    assert (await BackupEngine(store).verify("two")).ok
    await engine(store, sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


async def test_a_parent_whose_manifest_is_damaged_is_not_used(
    tree: Path,
    tmp_path: Path,
    sleep: RecordingSleep,
    opened: Counter[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    store.objects[manifest_key("one")] = store.objects[manifest_key("one")][:-40]  # cut short
    opened.clear()
    second = await engine(store, sleep).backup(tree, name="two")
    assert second.parent == "" and second.unchanged == 0 and sum(opened.values()) == 13
    assert "the parent backup cannot be read, so every file is read" in caplog.text
    await engine(store, sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


async def test_a_parent_of_an_older_format_means_every_file_is_read(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    import json

    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    doc = json.loads(decode(store.objects[manifest_key("one")], where="test"))
    doc["format_version"] = 2  # as the previous version wrote it: no ctime, no inode, no root
    doc["entries"] = [e for e in doc["entries"] if e["path"] != "."]
    for entry in doc["entries"]:
        entry.pop("ctime_ns", None)
        entry.pop("inode", None)
    store.objects[manifest_key("one")] = json.dumps(doc).encode()
    await engine(store, sleep).restore("one", tmp_path / "old")  # it still restores
    assert_same_tree(tree, tmp_path / "old")
    opened.clear()

    second = await engine(store, sleep).backup(tree, name="two")
    assert second.parent == "one" and second.unchanged == 0 and sum(opened.values()) == 13
    assert second.chunks_uploaded == 0  # its chunks are still trusted
    opened.clear()
    third = await engine(store, sleep).backup(tree, name="three")  # a parent of format 3 now
    assert third.unchanged == 13 and opened == Counter()


class Days:
    """A clock that stays on the day it is set to (the lock checks times between readings)."""

    def __init__(self) -> None:
        self.day = 0

    def __call__(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=self.day)


async def test_the_parent_is_the_newest_backup_of_the_same_source_or_the_one_named(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", seed=1)
    store = MemoryStorage()
    clock = Days()
    eng = engine(store, sleep, clock=clock)
    await eng.backup(a, name="a1")
    clock.day = 1
    await eng.backup(b, name="b1")
    clock.day = 2
    assert (await eng.backup(a, name="a2")).parent == "a1"
    clock.day = 3
    assert (await eng.backup(b, name="b2")).parent == "b1"
    clock.day = 4
    assert (await eng.backup(a, name="a3", options=BackupOptions(parent="a1"))).parent == "a1"
    with pytest.raises(ConfigError, match="--parent nope: no backup named 'nope'"):
        await eng.backup(a, name="a4", options=BackupOptions(parent="nope"))


async def test_the_parent_is_found_from_one_listing_and_one_head_whatever_the_backups(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    """Finding the parent reads the head of the newest backup of the same source only (its
    mark names it in the listing), not every backup's; a mark whose head belies it is passed
    over, and a backup without a mark (made before marks existed) is still a candidate."""
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", seed=1)
    memory = MemoryStorage()
    clock = Days()
    for day in range(6):  # six backups of another source, newer than a1
        clock.day = day + 1
        await engine(memory, sleep, clock=clock).backup(b, name=f"b{day}")
    clock.day = 0
    await engine(memory, sleep, clock=clock).backup(a, name="a1")
    marks = sorted(k for k in memory.objects if "/SOURCE." in k)
    assert len(marks) == 7 and all(k.count("/") == 2 for k in marks)

    def heads_read(watched: WatchedStorage) -> set[str]:
        return {k for (op, k) in watched.calls if op in ("get", "get_range") and "MANIFEST" in k}

    clock.day = 10
    watched = WatchedStorage(memory)
    assert (await engine(watched, sleep, clock=clock).backup(a, name="a2")).parent == "a1"
    assert heads_read(watched) == {manifest_key("a1")}  # and its MANIFEST, once

    # A mark that lies (a name race's loser leaves one beside another job's MANIFEST): its
    # head says another source, so it is passed over for the next candidate.
    [b5_mark] = [k for k in memory.objects if k.startswith("backups/b5/SOURCE.")]
    [a2_mark] = [k for k in memory.objects if k.startswith("backups/a2/SOURCE.")]
    memory.objects["backups/b5/" + a2_mark.split("/")[2].replace(".2026", ".2099")] = b""
    clock.day = 11
    watched = WatchedStorage(memory)
    assert (await engine(watched, sleep, clock=clock).backup(a, name="a3")).parent == "a2"
    assert heads_read(watched) == {manifest_key("b5"), manifest_key("a2")}

    # A backup without a mark (an older version made it): its head is read, and it is found.
    clock.day = 12
    await engine(memory, sleep, clock=clock).backup(a, name="a4")
    del memory.objects[next(k for k in memory.objects if k.startswith("backups/a4/SOURCE."))]
    clock.day = 13
    watched = WatchedStorage(memory)
    assert (await engine(watched, sleep, clock=clock).backup(a, name="a5")).parent == "a4"
    assert manifest_key("a4") in heads_read(watched)

    # Deleting a backup takes its mark with it.
    await engine(memory, sleep).delete("b5")
    assert not [k for k in memory.objects if k.startswith("backups/b5/")]
    assert b5_mark not in memory.objects


async def test_list_reads_only_heads_sorts_by_finish_time_and_filters(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    a, b = make_tree(tmp_path / "a"), make_tree(tmp_path / "b", seed=1)
    memory = MemoryStorage()
    clock = Days()
    eng = engine(memory, sleep, clock=clock)
    clock.day = 2
    await eng.backup(a, name="y", options=BackupOptions(tags=("daily",)))
    clock.day = 1  # "z" finishes before "y"
    await eng.backup(b, name="z", options=BackupOptions(tags=("daily", "db")))
    clock.day = 3
    await eng.backup(a, name="x")
    watched = WatchedStorage(memory)
    listing = await BackupEngine(watched).list_backups()
    assert [i.name for i in listing] == ["z", "y", "x"]
    assert {k for (op, k) in watched.calls if op == "get"} == set()  # no MANIFEST read whole
    assert watched.calls["get_range", manifest_key("y")] == 1
    assert listing[0].tags == ["daily", "db"] and listing[0].source == str(b)
    assert listing[0].files == 13 and listing[0].format_version == 3
    assert listing[2].parent == "y"

    def names(**filters: object) -> list[str]:
        return [i.name for i in infos if Filters(**filters).match(i)]  # type: ignore[arg-type]

    infos = listing
    assert names(tags=["daily"]) == ["z", "y"]
    assert names(tags=["daily", "db"]) == ["z"]
    assert names(source=str(a)) == ["y", "x"]
    assert names(host="elsewhere") == []
    with pytest.raises(ConfigError, match="invalid tag 'a b'"):
        BackupOptions(tags=("a b",))


class Phases:
    """A progress that records the phases a job goes through."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def phase(self, name: str, detail: str = "") -> None:
        if not self.seen or self.seen[-1] != name:
            self.seen.append(name)

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        pass


async def test_every_phase_is_reported(tree: Path, sleep: RecordingSleep) -> None:
    store = MemoryStorage()
    first = Phases()
    await engine(store, sleep, progress=first).backup(tree, name="one")
    assert first.seen == [
        "reading the parent",
        "listing the store",
        "reading and uploading",
        "committing",
    ]
    second = Phases()
    await engine(store, sleep, progress=second).backup(tree, name="two")
    assert "listing the store" not in second.seen and second.seen[0] == "reading the parent"


async def test_on_every_store_an_incremental_backup_reads_only_what_changed(
    any_store: StoreUnderTest, tmp_path: Path, opened: Counter[str]
) -> None:
    """Local, moto and fake-gcs-server: the parent found through range reads of MANIFEST
    heads (each server's own Range handling), unchanged files not opened, bytes restored."""
    tree = make_tree(tmp_path / "source")
    async with any_store.store() as store:
        eng = BackupEngine(store, fast_config())
        await eng.backup(tree, name="one", options=BackupOptions(tags=("first",)))
        head = await store.get_range(manifest_key("one"), 0, 4)
        assert head == ZSTD_MAGIC  # the server served the range, not the whole object
        (tree / "sub" / "deeper" / "leaf.txt").write_text("changed\n")
        opened.clear()
        second = await eng.backup(tree, name="two")
        assert list(opened) == [str(tree / "sub/deeper/leaf.txt")]
        assert (second.parent, second.unchanged, second.chunks_uploaded) == ("one", 12, 1)
        listing = await eng.list_backups(Filters(tags=["first"]))
        assert [(i.name, i.files, i.format_version) for i in listing] == [("one", 13, 3)]
        await eng.restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


async def test_hard_links_and_owners_survive_an_incremental_backup(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    os.link(tree / "big.bin", tree / "big-again.bin")  # one file, two names
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    opened.clear()
    second = await engine(store, sleep).backup(tree, name="two")
    assert opened == Counter() and second.unchanged == 13  # the other name is a link, not read
    manifest = await BackupEngine(store).manifest("two")
    by_path = {e.path: e for e in manifest.entries}
    assert by_path["big.bin"].hardlink == "big-again.bin"  # the name the walk found first
    assert by_path["private"].uid == os.getuid()  # from the walk, as for a file read
    await engine(store, sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    assert (
        os.stat(tmp_path / "out" / "big.bin").st_ino
        == os.stat(tmp_path / "out" / "big-again.bin").st_ino
    )


async def test_an_unchanged_entry_is_taken_as_the_parent_has_it_and_a_chmod_is_recorded(
    tree: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    """The walk's thread takes an unchanged file's entry from the parent; with --ignore-ctime
    a chmod (which moves only ctime) leaves the file unread, and its new mode is recorded."""
    store = MemoryStorage()
    await engine(store, sleep).backup(tree, name="one")
    (tree / "exact.bin").chmod(0o600)
    opened.clear()
    ignore = BackupOptions(changes=ChangeDetection(ignore_ctime=True))
    second = await engine(store, sleep).backup(tree, name="two", options=ignore)
    assert opened == Counter() and second.unchanged == 13
    one, two = [await BackupEngine(store).manifest(n) for n in ("one", "two")]
    before, after = ({e.path: e for e in m.entries} for m in (one, two))
    assert after["exact.bin"].mode == 0o600 and before["exact.bin"].mode != 0o600
    assert after["exact.bin"].ctime_ns == (tree / "exact.bin").stat().st_ctime_ns
    assert after["exact.bin"].chunks == before["exact.bin"].chunks
    assert {p: e for p, e in after.items() if p != "exact.bin"} == {
        p: e for p, e in before.items() if p != "exact.bin"
    }
    # "two" recorded the ctime the chmod left: a backup that compares ctime finds it unchanged
    third = await engine(store, sleep).backup(tree, name="three")
    assert opened == Counter() and third.unchanged == 13


async def test_extended_attributes_of_unchanged_files_are_kept_and_a_new_one_is_read(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, opened: Counter[str]
) -> None:
    leaf = tree / "sub" / "deeper" / "leaf.txt"
    try:
        os.setxattr(leaf, "user.note", b"first")
    except OSError:
        pytest.skip(f"the file system of {tree} has no user extended attributes")
    store = MemoryStorage()
    with_xattrs = BackupOptions(xattrs=True)
    await engine(store, sleep).backup(tree, name="one", options=with_xattrs)
    opened.clear()
    second = await engine(store, sleep).backup(tree, name="two", options=with_xattrs)
    assert opened == Counter() and second.unchanged == 13
    entry = {e.path: e for e in (await BackupEngine(store).manifest("two")).entries}
    assert entry["sub/deeper/leaf.txt"].xattrs == (("user.note", b"first"),)
    os.setxattr(leaf, "user.note", b"second")  # moves ctime: the file is read again
    third = await engine(store, sleep).backup(tree, name="three", options=with_xattrs)
    assert list(opened) == [str(leaf)] and third.unchanged == 12
    entry = {e.path: e for e in (await BackupEngine(store).manifest("three")).entries}
    assert entry["sub/deeper/leaf.txt"].xattrs == (("user.note", b"second"),)
    await engine(store, sleep).restore("three", tmp_path / "out")
    assert os.getxattr(tmp_path / "out" / "sub" / "deeper" / "leaf.txt", "user.note") == b"second"


async def test_a_large_parent_is_taken_in_bounded_trips_with_the_loop_free_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic, not timed: building the parent's table of files (what each walked file
    is compared with) takes at most ``ENTRIES_PER_TRIP`` entries per worker-thread trip, with
    the loop running between trips (one thread call for every entry, as before, fails this),
    and the table it builds answers for every file."""
    count = 2 * ENTRIES_PER_TRIP + 7
    digest = "c" * 64
    files = tuple(
        FileEntry(f"f{i:06}", "file", 0o644, i, size=1, sha256=digest, chunks=(f"{i:064x}",),
                  ctime_ns=i, inode=i + 1)
        for i in range(count)
    )  # fmt: skip
    manifest = Manifest(name="p", job_id="j", started="s", finished="f", host="h", source="/s",
                        chunk_size=4, entries=files)  # fmt: skip
    sizes: list[int] = []
    ticks = 0
    starts: list[int] = []
    real_to_thread = threads.to_thread

    async def recording_to_thread(call: Any, entries: Any) -> Any:
        sizes.append(len(entries))
        starts.append(ticks)
        return await real_to_thread(call, entries)

    async def ticker() -> None:
        nonlocal ticks
        while len(sizes) < 3:
            ticks += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(parent_module, "to_thread", recording_to_thread)
    task = asyncio.create_task(ticker())
    parent = await Parent.of(manifest, ChangeDetection())
    await task
    assert sizes == [ENTRIES_PER_TRIP, ENTRIES_PER_TRIP, 7]
    assert starts[0] < starts[1] < starts[2]  # the loop ran between trips
    assert len(parent.refs) == count and len(parent.sample) == SPOT_CHECKS
    last = files[-1]
    # (mode, ino, dev, nlink, uid, gid, size, 3 times in s, 3 as floats, atime/mtime/ctime ns)
    fields = (0o100644, last.inode, 0, 1, 0, 0, 1, 0, 0, 0, 0.0, 0.0, 0.0)
    st = os.stat_result((*fields, 0, last.mtime_ns, last.ctime_ns))
    assert parent.unchanged(last.path, st) == last
