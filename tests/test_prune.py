"""Retention and prune: the policy's arithmetic, mark and sweep, and the races with a backup."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    ConfigError,
    FaultyStorage,
    LocalStorage,
    ManifestError,
    MemoryStorage,
    RetentionPolicy,
    Storage,
)
from asyncbackup.layout import manifest_key
from asyncbackup.retention import decide
from asyncbackup.storage.base import ObjectPage
from asyncbackup.storage.local import TEMP_PREFIX
from tests.conftest import SMALL_CHUNK, RecordingSleep, assert_same_tree, fast_config
from tests.stores import WatchedStorage

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # a Monday


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def kept(backups: list[tuple[str, datetime]], **policy: Any) -> dict[str, tuple[str, ...]]:
    return {d.name: d.reasons for d in decide(backups, RetentionPolicy(**policy)) if d.kept}


# The policy, as restic's forget defines it


def test_keep_last_keeps_the_newest_n() -> None:
    backups = [(f"b{i}", T0 + timedelta(hours=i)) for i in range(5)]
    assert kept(backups, keep_last=2) == {"b4": ("last 1",), "b3": ("last 2",)}
    assert len(kept(backups, keep_last=10)) == 5


def test_keep_daily_keeps_the_newest_of_each_of_the_last_n_days_with_backups() -> None:
    backups = [
        ("mon-early", utc("2026-11-02T01:00")),
        ("mon-late", utc("2026-11-02T23:00")),
        ("tue", utc("2026-11-03T10:00")),
        # no backup on Wednesday: it does not count as one of the days
        ("thu-a", utc("2026-11-05T08:00")),
        ("thu-b", utc("2026-11-05T09:00")),
    ]
    assert kept(backups, keep_daily=3) == {
        "thu-b": ("daily 2026-11-05",),
        "tue": ("daily 2026-11-03",),
        "mon-late": ("daily 2026-11-02",),
    }


def test_keep_weekly_uses_iso_weeks_and_rules_add_up() -> None:
    backups = [
        ("w45-sun", utc("2026-11-08T20:00")),  # ISO week 45 ends on Sunday 8 November
        ("w46-mon", utc("2026-11-09T01:00")),
        ("w46-fri", utc("2026-11-13T01:00")),
        ("w47-tue", utc("2026-11-17T01:00")),
        ("w44-wed", utc("2026-10-28T01:00")),
    ]
    assert kept(backups, keep_weekly=3, keep_last=1) == {
        "w47-tue": ("last 1", "weekly 2026-W47"),
        "w46-fri": ("weekly 2026-W46",),
        "w45-sun": ("weekly 2026-W45",),
    }


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({}, "prune needs at least one of --keep-last, --keep-daily, --keep-weekly, --keep-mon"),
        ({"keep_within": -60.0, "keep_last": 1}, "--keep-within must not be negative, not -60"),
        ({"keep_last": 1, "group_by": ("host", "path")}, "cannot group backups by 'host,path'"),
        ({"keep_last": 0, "keep_daily": 0}, "at least one of"),
        ({"keep_last": -1}, "--keep-last must not be negative, not -1"),
        ({"keep_weekly": -2, "keep_last": 1}, "--keep-weekly must not be negative"),
    ],
)
def test_a_policy_that_keeps_nothing_or_less_is_refused(
    policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RetentionPolicy(**policy)


# Mark and sweep on a store


def write_source(root: Path, name: str) -> Path:
    """A tree shared by every backup (one file), plus a file of two chunks unique to ``name``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shared.txt").write_bytes(b"in every backup\n" * 100)
    (root / "unique.bin").write_bytes(random.Random(name).randbytes(2 * SMALL_CHUNK))
    return root


class Clock:
    """One clock for a store's object times and the engine's: tests move it by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def posix(self) -> float:
        return self.now.timestamp()


async def make_backups(
    store: Storage, tmp_path: Path, clock: Clock, names_and_times: list[tuple[str, datetime]]
) -> dict[str, Path]:
    sources = {}
    for name, when in names_and_times:
        clock.now = when
        source = write_source(tmp_path / "src" / name, name)
        await BackupEngine(store, fast_config(), clock=clock).backup(source, name=name)
        sources[name] = source
    return sources


def chunk_keys(store: MemoryStorage) -> set[str]:
    return {k for k in store.objects if k.startswith("chunks/")}


async def refs_of(store: Storage, names: list[str]) -> set[str]:
    refs: set[str] = set()
    for name in names:
        refs |= {"chunks/" + r for r in (await BackupEngine(store).manifest(name)).refs()}
    return refs


async def test_prune_keeps_what_it_promises_and_frees_the_rest(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    clock = Clock(T0)
    store = MemoryStorage(clock=clock.posix)
    days = [("d1", T0), ("d2", T0 + timedelta(days=1)), ("d3", T0 + timedelta(days=2))]
    sources = await make_backups(
        store, tmp_path, clock, [*days, ("d3b", days[2][1] + timedelta(hours=1))]
    )
    stray = "chunks/" + "f" * 64  # left by a backup that never committed, long ago
    store.objects[stray] = b"orphan"
    store.modified[stray] = (T0 - timedelta(days=30)).timestamp()
    not_a_chunk = "chunks/README"
    store.objects[not_a_chunk] = b"not ours to remove"
    clock.now = T0 + timedelta(days=5)

    engine = BackupEngine(store, fast_config(), clock=clock, sleep=sleep)
    before = dict(store.objects)
    dry = await engine.prune(RetentionPolicy(keep_daily=2, group_by=()), grace=0, dry_run=True)
    assert store.objects == before  # a dry run deletes nothing
    assert [d.name for d in dry.removed] == ["d3", "d1"]
    assert dry.chunks_deleted == 2 * 2 + 1  # the unique chunks of d1 and d3, and the orphan

    report = await engine.prune(RetentionPolicy(keep_daily=2, group_by=()), grace=0)
    assert {d.name: d.reasons for d in report.kept} == {
        "d3b": ("daily 2026-11-04",),
        "d2": ("daily 2026-11-03",),
    }
    assert [d.name for d in report.removed] == ["d3", "d1"]
    assert sorted(b.name for b in await engine.list_backups()) == ["d2", "d3b"]
    # Exactly the chunks the kept backups name stay, and what is not a chunk.
    assert chunk_keys(store) == await refs_of(store, ["d2", "d3b"]) | {not_a_chunk}
    assert report.chunks_deleted == dry.chunks_deleted
    assert report.bytes_freed == 4 * SMALL_CHUNK + len(b"orphan")
    for name in ("d2", "d3b"):
        await engine.restore(name, tmp_path / "out" / name)
        assert_same_tree(sources[name], tmp_path / "out" / name)
        assert (await engine.verify(name, deep=True)).ok


async def test_delete_then_prune_gives_the_space_back(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = MemoryStorage(clock=clock.posix)
    await make_backups(store, tmp_path, clock, [("a", T0), ("b", T0 + timedelta(hours=1))])
    engine = BackupEngine(store, fast_config(), clock=clock)
    await engine.delete("b")
    clock.now = T0 + timedelta(days=1)
    assert len(chunk_keys(store)) == 5  # shared + a's two + b's two: delete frees nothing
    report = await engine.prune(RetentionPolicy(keep_last=5, group_by=()), grace=0)
    assert report.removed == [] and report.chunks_deleted == 2
    assert chunk_keys(store) == await refs_of(store, ["a"])


async def test_unused_chunks_younger_than_the_grace_period_stay(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = MemoryStorage(clock=clock.posix)
    await make_backups(store, tmp_path, clock, [("a", T0), ("b", T0 + timedelta(hours=2))])
    engine = BackupEngine(store, fast_config(), clock=clock)
    await engine.delete("a")  # a's chunks: 2 hours old when b finished
    clock.now = T0 + timedelta(hours=3)
    report = await engine.prune(RetentionPolicy(keep_last=1, group_by=()), grace=4 * 3600)
    assert report.chunks_deleted == 0 and report.chunks_young == 2
    assert len(chunk_keys(store)) == 5
    report = await engine.prune(RetentionPolicy(keep_last=1, group_by=()), grace=2 * 3600)
    assert report.chunks_deleted == 2 and report.chunks_young == 0
    assert chunk_keys(store) == await refs_of(store, ["b"])


async def test_an_unreadable_manifest_stops_prune_before_it_deletes_anything(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    store = MemoryStorage(clock=clock.posix)
    await make_backups(
        store, tmp_path, clock, [(n, T0 + timedelta(days=i)) for i, n in enumerate("abc")]
    )
    store.objects[manifest_key("b")] = b'{"format_version": 1, "entr'
    before = dict(store.objects)
    with pytest.raises(ManifestError) as caught:
        await BackupEngine(store, fast_config(), clock=clock).prune(
            RetentionPolicy(keep_last=1, group_by=()), grace=0
        )
    message = str(caught.value)
    assert "prune stopped and deleted nothing: the MANIFEST of backup 'b' cannot be read" in message
    assert "'asyncbackup delete STORE b'" in message
    assert store.objects == before


# The grace period, beside writers that take no lock


class HookedListing(WatchedStorage):
    """Runs ``hook`` once, when the first listing of ``prefix`` is asked for."""

    def __init__(self, inner: Storage, prefix: str, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.hook: Callable[[], Awaitable[None]] | None = hook

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        if prefix == self.prefix and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return await super().list_objects(prefix, token)


async def test_chunks_written_after_the_prune_began_stay(tmp_path: Path) -> None:
    """A backup uploads chunks while the prune reads the MANIFESTs (grace 0): they are
    unreferenced when the prune lists them, but younger than its start."""
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    await make_backups(memory, tmp_path, clock, [("a", T0)])
    clock.now = T0 + timedelta(days=1)
    written_during = "chunks/" + "e" * 64

    async def a_backup_uploads() -> None:
        clock.now += timedelta(seconds=1)  # after the prune began
        await memory.put(written_during, b"part of a backup not yet committed")

    store = HookedListing(memory, "backups/", a_backup_uploads)
    report = await BackupEngine(store, clock=clock).prune(
        RetentionPolicy(keep_last=1, group_by=()), grace=0
    )
    assert written_during in memory.objects
    assert report.chunks_deleted == 0 and report.chunks_young == 1


async def test_prune_deletes_are_retried_transfers(tmp_path: Path, sleep: RecordingSleep) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    await make_backups(
        memory, tmp_path, clock, [(n, T0 + timedelta(days=i)) for i, n in enumerate("abcd")]
    )
    clock.now = T0 + timedelta(days=5)
    chunks = chunk_keys(memory)
    # Every delete fails (after it took effect), every time: each is retried, then prune gives
    # up before its sweep, so no chunk is gone.
    always = FaultyStorage(memory, rule=lambda op, key: "fail_after" if op == "delete" else None)
    engine = BackupEngine(always, fast_config(max_attempts=3), clock=clock, sleep=sleep)
    with pytest.raises(BackupFailed, match="delete backups/"):
        await engine.prune(RetentionPolicy(keep_last=1, group_by=()), grace=0)
    assert len(sleep.calls) >= 2 and always.injected["fail_after"] >= 3
    assert chunk_keys(memory) == chunks

    # Half of the calls fail, before or after taking effect: the retries finish the job.
    flaky = FaultyStorage(memory, rate=0.5, seed=3)
    await BackupEngine(flaky, fast_config(), clock=clock, sleep=sleep).prune(
        RetentionPolicy(keep_last=1, group_by=()), grace=0
    )
    assert sum(flaky.injected.values()) > 5
    assert sorted(b.name for b in await BackupEngine(memory).list_backups()) == ["d"]
    assert chunk_keys(memory) == await refs_of(memory, ["d"])


async def test_temporary_files_a_crash_left_in_a_local_store_go_after_the_grace_period(
    tmp_path: Path,
) -> None:
    store = LocalStorage(tmp_path / "store")
    source = write_source(tmp_path / "source", "a")
    engine = BackupEngine(store, fast_config())
    await engine.backup(source, name="a")
    now = time.time()
    stale = tmp_path / "store" / "chunks" / f"{TEMP_PREFIX}killed-mid-put"
    fresh = tmp_path / "store" / "chunks" / f"{TEMP_PREFIX}a-running-backup"
    for path, age in ((stale, 2 * 3600), (fresh, 60)):
        path.write_bytes(b"half a chunk")
        os.utime(path, (now - age, now - age))

    dry = await engine.prune(RetentionPolicy(keep_last=1, group_by=()), grace=3600, dry_run=True)
    assert dry.leftovers == 1 and stale.exists()
    assert "would remove 1 temporary file left by interrupted writes" in dry.summary()
    report = await engine.prune(RetentionPolicy(keep_last=1, group_by=()), grace=3600)
    assert report.leftovers == 1 and report.chunks_deleted == 0
    assert not stale.exists() and fresh.exists()  # a young one may be a running job's
    await engine.restore("a", tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")
