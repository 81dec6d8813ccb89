"""Repository locks: shared beside shared, exclusive alone, waits with a bound, stale locks,
refresh, and a job that can no longer trust its lock stops before it deletes or commits."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    ConfigError,
    FaultyStorage,
    MemoryStorage,
    RetentionPolicy,
    Storage,
)
from asyncbackup.errors import LockError
from asyncbackup.layout import lock_key
from asyncbackup.locks import (
    EXCLUSIVE,
    SHARED,
    Identity,
    LockKind,
    LockRecord,
    LockSettings,
    RepositoryLock,
)
from tests.conftest import RecordingSleep, assert_same_tree, fast_config
from tests.stores import WatchedStorage
from tests.test_cli import EXIT_FAILED, EXIT_OK, cli, list_json
from tests.test_prune import Clock, HookedListing, chunk_keys, write_source

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
ELSEWHERE = Identity("other-host", 4242, "alice", "pid:[1]")


def lock_of(
    kind: LockKind, operation: str, *, refreshed: datetime, holder: Identity = ELSEWHERE
) -> tuple[str, bytes]:
    """A lock as another job would have written it: (key, bytes)."""
    key = lock_key(f"{operation}-{kind}-{holder.host}")
    when = refreshed.timestamp()
    return key, LockRecord(key, kind, operation, holder, when - 60, when).to_json()


def place(store: MemoryStorage, lock: tuple[str, bytes]) -> str:
    store.objects[lock[0]] = lock[1]
    return lock[0]


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


async def old_and_new(tmp_path: Path, clock: Clock, memory: MemoryStorage) -> Path:
    """Backup ``old`` deleted (its chunks unused, a day old), and a source that reuses them."""
    source = write_source(tmp_path / "src", "old")
    await BackupEngine(memory, fast_config(), clock=clock).backup(source, name="old")
    await BackupEngine(memory).delete("old")
    clock.now = T0 + timedelta(days=1)
    (source / "new.txt").write_text("one new chunk\n")
    return source


def locks_in(store: MemoryStorage) -> list[str]:
    return sorted(k for k in store.objects if k.startswith("locks/"))


async def test_two_backups_hold_their_shared_locks_at_once(tmp_path: Path) -> None:
    memory = MemoryStorage()
    a, b = write_source(tmp_path / "a", "a"), write_source(tmp_path / "b", "b")
    seen: list[list[str]] = []

    async def second_backup_meanwhile(key: str) -> None:
        if key.startswith("chunks/") and not seen:
            seen.append(locks_in(memory))  # the first backup's lock
            await BackupEngine(memory, fast_config()).backup(b, name="b")

    watched = WatchedStorage(memory, on_put=second_backup_meanwhile)
    await BackupEngine(watched, fast_config()).backup(a, name="a")
    assert len(seen[0]) == 1 and locks_in(memory) == []  # both released
    for name, source in (("a", a), ("b", b)):
        await BackupEngine(memory).restore(name, tmp_path / "out" / name)
        assert_same_tree(source, tmp_path / "out" / name)


async def test_a_prune_waits_for_a_running_backup_and_fails_after_the_lock_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    source = await old_and_new(tmp_path, clock, memory)
    old_chunks = chunk_keys(memory)
    slept: list[float] = []

    async def time_passes(seconds: float) -> None:  # the prune's back-off, on the fake clock
        slept.append(seconds)
        clock.now += timedelta(seconds=seconds)

    failures: list[LockError] = []

    async def prune_meanwhile(key: str) -> None:
        if key.startswith("chunks/") and not failures:
            prune = BackupEngine(
                memory, clock=clock, locking=LockSettings(wait=60), lock_sleep=time_passes
            )
            with pytest.raises(LockError) as caught:
                await prune.prune(RetentionPolicy(keep_last=1), grace=0)
            failures.append(caught.value)

    watched = WatchedStorage(memory, on_put=prune_meanwhile)
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        await BackupEngine(watched, fast_config(), clock=clock).backup(source, name="new")
    message = str(failures[0])
    host, pid = socket.gethostname(), os.getpid()
    assert f"prune could not take the exclusive lock of {memory.url} within 60 s" in message
    assert "held by backup (shared lock locks/" in message
    assert (
        f"of pid {pid} on host {host}" in message and "since 2026-11-03T12:00:00+00:00" in message
    )
    assert "'asyncbackup unlock STORE' removes stale locks" in message
    assert "prune waits for the exclusive lock: held by backup (shared lock" in caplog.text
    assert sum(slept) == pytest.approx(60) and len(slept) > 3  # backed off, bounded by the wait
    assert old_chunks <= chunk_keys(memory)  # the prune deleted nothing
    assert locks_in(memory) == []
    await BackupEngine(memory).restore("new", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")


async def test_a_backup_waits_for_a_running_prune_then_uploads_what_it_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    source = await old_and_new(tmp_path, clock, memory)
    old_refs = chunk_keys(memory)
    prune_done = asyncio.Event()
    backup_waits = asyncio.Event()

    async def until_the_prune_is_done(seconds: float) -> None:
        if seconds == LockSettings().refresh_every:
            await asyncio.Event().wait()  # no refresh in this test: it ends long before
        backup_waits.set()
        await prune_done.wait()

    backup_engine = BackupEngine(memory, fast_config(), clock=clock,
                                 lock_sleep=until_the_prune_is_done)  # fmt: skip
    backups: list[asyncio.Task[object]] = []

    async def a_backup_starts() -> None:  # while the prune holds its lock, before it sweeps
        backups.append(asyncio.create_task(backup_engine.backup(source, name="new")))
        await backup_waits.wait()

    store = HookedListing(memory, "chunks/", a_backup_starts)
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        report = await BackupEngine(store, clock=clock).prune(RetentionPolicy(keep_last=1), grace=0)
        prune_done.set()
        await backups[0]
    assert report.chunks_deleted == len(old_refs)  # old's chunks were all unused then
    assert "backup waits for the shared lock: held by prune (exclusive lock" in caplog.text
    assert old_refs <= chunk_keys(memory)  # uploaded again: the backup listed after the prune
    await BackupEngine(memory).restore("new", tmp_path / "out")
    assert_same_tree(source, tmp_path / "out")
    assert locks_in(memory) == []


async def test_a_stale_lock_is_ignored_with_a_warning_that_names_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    source = write_source(tmp_path / "src", "a")
    key = place(memory, lock_of(EXCLUSIVE, "prune", refreshed=T0 - timedelta(minutes=31)))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        await BackupEngine(memory, fast_config(), clock=clock).backup(source, name="a")
    assert (
        f"backup ignores the stale lock of prune (exclusive lock {key}) of pid 4242 on host "
        "other-host by user alice" in caplog.text
    )
    assert "not refreshed for 31 min (stale after 30 min)" in caplog.text
    assert "'asyncbackup unlock STORE' removes it" in caplog.text
    assert locks_in(memory) == [key]  # ignored, not removed: that is unlock's job

    # 29 minutes old: live, so the backup waits, then gives up (exit 1 through the CLI)
    memory.objects[key] = lock_of(EXCLUSIVE, "prune", refreshed=T0 - timedelta(minutes=29))[1]
    engine = BackupEngine(memory, fast_config(), clock=clock, locking=LockSettings(wait=0))
    with pytest.raises(LockError, match="held by prune"):
        await engine.backup(source, name="b")
    assert "backups/b/MANIFEST" not in memory.objects


async def test_the_lock_of_a_dead_process_on_this_host_is_stale_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    await old_and_new(tmp_path, clock, memory)
    here = Identity.of_this_process()
    killed = Identity(here.host, dead_pid(), here.user, here.pid_namespace)
    key = place(memory, lock_of(SHARED, "backup", refreshed=clock.now, holder=killed))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        report = await BackupEngine(memory, clock=clock).prune(
            RetentionPolicy(keep_last=1), grace=0
        )
    assert f"its process {killed.pid} is gone from this host" in caplog.text
    assert report.chunks_deleted > 0

    # The same pid on another host, or in another pid namespace, is not ours to judge.
    memory.objects.pop(key)
    for holder in (
        Identity("other-host", killed.pid, here.user, here.pid_namespace),
        Identity(here.host, killed.pid, here.user, "pid:[elsewhere]"),
    ):
        key = place(memory, lock_of(SHARED, "backup", refreshed=clock.now, holder=holder))
        engine = BackupEngine(memory, clock=clock, locking=LockSettings(wait=0))
        with pytest.raises(LockError, match=f"of pid {killed.pid} on host {holder.host}"):
            await engine.prune(RetentionPolicy(keep_last=1), grace=0)
        memory.objects.pop(key)


async def test_an_unreadable_lock_blocks_until_it_is_older_than_the_stale_period(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    source = write_source(tmp_path / "src", "a")
    await memory.put("locks/garbled", b"{not a lock")  # stamped now, by the store's clock
    engine = BackupEngine(memory, fast_config(), clock=clock, locking=LockSettings(wait=0))
    with pytest.raises(LockError, match=r"unreadable lock locks/garbled \(not a lock"):
        await engine.backup(source, name="a")
    clock.now += timedelta(minutes=31)
    await engine.backup(source, name="a")


async def test_a_prune_that_could_not_refresh_its_lock_stops_before_it_deletes(
    tmp_path: Path,
) -> None:
    """The process was paused (or the store refused every refresh) for longer than it may trust
    its lock: another job may have taken the lock as stale, so it deletes nothing more."""
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    await old_and_new(tmp_path, clock, memory)
    chunks = chunk_keys(memory)

    async def paused() -> None:
        clock.now += timedelta(minutes=16)  # past half the stale period, no refresh meanwhile

    store = HookedListing(memory, "chunks/", paused)
    with pytest.raises(LockError) as caught:
        await BackupEngine(store, clock=clock).prune(RetentionPolicy(keep_last=1), grace=0)
    assert "prune stopped: this job could not refresh its lock locks/" in str(caught.value)
    assert "for 16 min (another job may take it as stale after 30 min)" in str(caught.value)
    assert chunk_keys(memory) == chunks
    assert locks_in(memory) == []  # it still removed its own lock


async def test_a_backup_whose_lock_was_removed_commits_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = MemoryStorage()
    source = write_source(tmp_path / "src", "a")
    removed: list[list[str]] = []

    async def unlock_force_meanwhile(key: str) -> None:
        if key.startswith("chunks/") and not removed:
            report = await BackupEngine(memory).unlock(force=True)
            removed.append(report.removed)

    watched = WatchedStorage(memory, on_put=unlock_force_meanwhile)
    with caplog.at_level(logging.WARNING, logger="asyncbackup"), pytest.raises(LockError) as caught:
        await BackupEngine(watched, fast_config()).backup(source, name="a")
    assert "removing the live lock of backup (shared lock locks/" in caplog.text
    assert len(removed[0]) == 1 and removed[0][0].endswith(": live, removed with --force")
    assert "backup stopped: its lock locks/" in str(caught.value)
    assert "was removed" in str(caught.value) and "nothing was committed" in str(caught.value)
    assert not any(k.startswith("backups/") for k in memory.objects)


class Stepper:
    """A lock's sleep that waits for the test: the refresh loop runs one round per ``step``."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.asleep = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asleep.set()
        await self.go.wait()
        self.go.clear()

    async def step(self) -> None:
        self.asleep.clear()
        self.go.set()
        await self.asleep.wait()  # the round is over: the loop sleeps again (or has ended)


async def test_the_lock_is_refreshed_while_held_and_never_brought_back_once_removed() -> None:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    engine = BackupEngine(memory, clock=clock)
    stepper = Stepper()
    lock = RepositoryLock(
        engine._repository("backup"),
        kind=SHARED,
        operation="backup",
        clock=clock.posix,
        sleep=stepper,
    )
    async with lock:
        await stepper.asleep.wait()
        [key] = locks_in(memory)
        for minutes in (5, 10, 15, 20, 25, 30, 35):  # far past the stale period, refreshed
            clock.now = T0 + timedelta(minutes=minutes)
            await stepper.step()
            record = LockRecord.from_json(key, memory.objects[key])
            assert record.refreshed == clock.posix() and record.created == T0.timestamp()
        lock.guard()  # still trusted
        await lock.check()
        memory.objects.pop(key)  # unlock --force
        stepper.go.set()
        assert lock._refresher is not None
        await lock._refresher  # the loop ends: it found its lock gone
        assert key not in memory.objects  # and did not write it again
        with pytest.raises(LockError, match="was removed"):
            lock.guard()


def test_lock_settings_refuse_a_refresh_too_slow_for_the_stale_period() -> None:
    with pytest.raises(ConfigError, match="at most a quarter of the stale period"):
        LockSettings(refresh_every=600, stale_after=1800)
    with pytest.raises(ConfigError, match="--lock-wait must not be negative"):
        LockSettings(wait=-1)
    assert LockSettings().trusted_for == 900


# Through the command line


async def put_lock(store: Storage, lock: tuple[str, bytes]) -> None:
    await store.put(*lock)


def test_unlock_removes_stale_locks_and_force_removes_the_rest(tmp_path: Path) -> None:
    from asyncbackup import LocalStorage

    root = tmp_path / "store"
    now = datetime.now(UTC)
    here = Identity.of_this_process()
    killed = Identity(here.host, dead_pid(), here.user, here.pid_namespace)
    stale = lock_of(SHARED, "backup", refreshed=now, holder=killed)
    old = lock_of(SHARED, "backup", refreshed=now - timedelta(hours=2))
    live = lock_of(EXCLUSIVE, "prune", refreshed=now)
    for lock in (stale, old, live):
        asyncio.run(put_lock(LocalStorage(root), lock))

    blocked = cli("backup", write_source(tmp_path / "src", "a"), root, "--lock-wait", "0")
    assert blocked.returncode == EXIT_FAILED, blocked.stderr
    assert "backup failed: backup could not take the shared lock" in blocked.stderr
    assert "held by prune (exclusive lock locks/prune-exclusive-other-host)" in blocked.stderr
    assert list_json(root) == []

    result = cli("unlock", root)
    assert result.returncode == EXIT_OK, result.stderr
    lines = sorted(result.stdout.splitlines(), key=lambda line: "other-host" in line)
    assert len(lines) == 2
    assert lines[0].startswith(
        f"removed backup (shared lock {stale[0]}) of pid {killed.pid} on host {here.host} "
        f"by user {here.user}, since "
    )
    assert lines[0].endswith(f"ago: its process {killed.pid} is gone from this host")
    since = (now - timedelta(hours=2, seconds=60)).isoformat(timespec="seconds")
    assert lines[1] == (
        f"removed backup (shared lock {old[0]}) of pid 4242 on host other-host by user alice, "
        f"since {since}, refreshed 2.0 h ago: not refreshed for 2.0 h (stale after 30 min)"
    )
    assert "left the live lock of prune (exclusive lock" in result.stderr
    assert "unlock: removed 2 locks, left 1 live ones" in result.stderr
    assert sorted(p.name for p in (root / "locks").iterdir()) == [live[0].split("/")[1]]

    forced = cli("unlock", root, "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    assert "WARNING removing the live lock of prune (exclusive lock" in forced.stderr
    assert forced.stdout.strip().endswith(": live, removed with --force")
    assert not (root / "locks").exists()
    backup = cli("backup", tmp_path / "src", root, "--name", "a")
    assert backup.returncode == EXIT_OK, backup.stderr


async def test_a_failed_acquire_leaves_no_lock_behind(tmp_path: Path) -> None:
    """The lock is written, then the listing of locks/ fails for good: the job fails, and
    removes the lock it wrote (else it would block every prune until it looked stale)."""
    memory = MemoryStorage()
    refused = FaultyStorage(
        memory,
        rule=lambda op, key: "fail_before" if (op, key) == ("list", "locks/") else None,
    )
    engine = BackupEngine(refused, fast_config(max_attempts=2), sleep=RecordingSleep())
    with pytest.raises(BackupFailed, match="list locks/"):
        await engine.backup(write_source(tmp_path / "src", "a"), name="a")
    assert refused.injected["fail_before"] == 2
    assert locks_in(memory) == [] and not any(k.startswith("backups/") for k in memory.objects)
