"""The retry contract (DESIGN section 4): each path for upload and download, isolation, budget."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, BackupFailed, FaultyStorage, MemoryStorage, RetryPolicy
from asyncbackup.errors import TransientStorageError
from asyncbackup.layout import chunk_key, manifest_key
from asyncbackup.metrics import Metrics
from asyncbackup.retry import Retrier, Transfer
from asyncbackup.storage.faulty import Fault
from tests.conftest import RecordingSleep, assert_same_tree, fast_config
from tests.stores import WatchedStorage, deny, fail_times


def first_chunk_of(store: MemoryStorage) -> str:
    return sorted(k for k in store.objects if k.startswith("chunks/"))[0]


def retries(metrics: Metrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "backup_retry_attempts_total", {"operation": operation}
    )
    assert value is not None
    return value


def no_manifest(store: MemoryStorage) -> bool:
    return not any(k.startswith("backups/") for k in store.objects)


async def backed_up(tree: Path, sleep: RecordingSleep) -> tuple[MemoryStorage, str]:
    """A memory store holding backup 'one' of ``tree``, and one of its chunk keys."""
    store = MemoryStorage()
    await BackupEngine(store, fast_config(), sleep=sleep).backup(tree, name="one")
    return store, first_chunk_of(store)


# --- upload: fails then succeeds; permanent; timeout --------------------------------------------


async def test_upload_fails_then_succeeds(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    _, victim = await backed_up(tree, RecordingSleep())
    rule = fail_times(3, "put", victim)

    memory = MemoryStorage()
    metrics = Metrics()
    engine = BackupEngine(
        FaultyStorage(memory, rule=rule), fast_config(), metrics=metrics, sleep=sleep
    )
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        await engine.backup(tree, name="two")
    assert retries(metrics, "backup") == 3
    assert len(sleep.calls) == 3
    # Full jitter under a doubling ceiling: 0.1, 0.2, 0.4 s.
    assert all(0 <= s <= 0.1 * 2**i for i, s in enumerate(sleep.calls))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3
    assert "attempt 1/10" in lines[0] and "attempt 3/10" in lines[2]
    assert all(victim.removeprefix("chunks/")[:12] in line for line in lines)
    await BackupEngine(memory, fast_config(), sleep=sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


async def test_upload_permanent_error_is_not_retried(tree: Path, sleep: RecordingSleep) -> None:
    _, victim = await backed_up(tree, RecordingSleep())
    memory = MemoryStorage()
    watched = WatchedStorage(memory, on_put=deny(victim))
    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(watched, fast_config(), sleep=sleep).backup(tree, name="two")
    assert watched.calls["put", victim] == 1
    assert sleep.calls == []
    assert "access denied" in str(caught.value)
    assert [f.path for f in caught.value.failures] != [""]
    assert no_manifest(memory)


async def test_upload_hung_attempt_times_out_and_is_retried(
    tree: Path, tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    _, victim = await backed_up(tree, RecordingSleep())
    rule = fail_times(1, "put", victim, "hang")

    memory = MemoryStorage()
    faulty = FaultyStorage(memory, rule=rule)
    config = fast_config(attempt_timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        await BackupEngine(faulty, config, sleep=sleep).backup(tree, name="two")
    assert faulty.injected["hang"] == 1
    assert len(sleep.calls) == 1
    assert any("no answer within 0.05s" in r.getMessage() for r in caplog.records)
    await BackupEngine(memory, fast_config(), sleep=sleep).restore("two", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


# --- download: fails then succeeds; permanent; timeout ------------------------------------------


async def test_download_fails_then_succeeds(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory, victim = await backed_up(tree, RecordingSleep())
    rule = fail_times(2, "get", victim, "fail_after")

    metrics = Metrics()
    faulty = FaultyStorage(memory, rule=rule)
    await BackupEngine(faulty, fast_config(), metrics=metrics, sleep=sleep).restore(
        "one", tmp_path / "out"
    )
    assert retries(metrics, "restore") == 2
    assert_same_tree(tree, tmp_path / "out")


async def test_download_permanent_error_is_not_retried(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory, victim = await backed_up(tree, RecordingSleep())
    del memory.objects[victim]  # a missing chunk: 404 where an object must exist
    watched = WatchedStorage(memory)
    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(watched, fast_config(), sleep=sleep).restore("one", tmp_path / "out")
    assert watched.calls["get", victim] == 1
    assert sleep.calls == []
    assert victim in str(caught.value)


async def test_download_hung_attempt_times_out_and_is_retried(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory, victim = await backed_up(tree, RecordingSleep())
    rule = fail_times(2, "get", victim, "hang")

    faulty = FaultyStorage(memory, rule=rule)
    config = fast_config(attempt_timeout=0.05)
    await BackupEngine(faulty, config, sleep=sleep).restore("one", tmp_path / "out")
    assert faulty.injected["hang"] == 2 and len(sleep.calls) == 2
    assert_same_tree(tree, tmp_path / "out")


# --- isolation, give-up, budget, policy -----------------------------------------------------------


async def test_a_retrying_chunk_does_not_hold_a_slot(tree: Path) -> None:
    """At concurrency 1, the failing chunk's backoff sleep waits until every other chunk is
    stored. If the sleep held the only slot, nothing else could be stored: a deadlock."""
    reference, victim = await backed_up(tree, RecordingSleep())
    others = {k for k in reference.objects if k.startswith("chunks/")} - {victim}
    memory = MemoryStorage()
    faulty = FaultyStorage(memory, rule=fail_times(3, "put", victim))

    async def sleep_until_others_are_stored(seconds: float) -> None:
        while not others <= memory.objects.keys():  # noqa: ASYNC110 - polls what the engine writes
            await asyncio.sleep(0)

    engine = BackupEngine(faulty, fast_config(concurrency=1), sleep=sleep_until_others_are_stored)
    async with asyncio.timeout(10):
        await engine.backup(tree, name="two")
    assert faulty.injected["fail_before"] == 3
    assert memory.objects[victim] == reference.objects[victim]


async def test_give_up_cancels_the_rest_and_commits_nothing(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "many"
    source.mkdir()
    for i in range(200):
        (source / f"f{i:03}").write_bytes(f"file {i}".encode())
    memory = MemoryStorage()
    watched = WatchedStorage(memory, on_put=deny(hashlib.sha256(b"file 0").hexdigest()))
    config = fast_config(concurrency=2)
    metrics = Metrics()
    engine = BackupEngine(watched, config, metrics=metrics, sleep=sleep)
    with pytest.raises(BackupFailed) as caught:
        await engine.backup(source, name="one")
    assert len(caught.value.failures) == 1
    assert caught.value.failures[0].path == "f000"
    assert watched.puts("chunks/") < 20  # fail fast: the other 190-odd never started
    assert no_manifest(memory)
    failed = {"operation": "backup", "outcome": "failed"}
    assert metrics.registry.get_sample_value("backup_files_total", failed) == 1
    assert metrics.registry.get_sample_value("backup_last_success_timestamp_seconds") is None


async def test_retry_budget_stops_a_job_against_a_dead_store(
    tree: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage()

    def dead_for_puts(operation: str, key: str) -> Fault | None:
        return "fail_before" if operation == "put" else None

    metrics = Metrics()
    config = fast_config(max_attempts=1000, budget=7)
    engine = BackupEngine(
        FaultyStorage(memory, rule=dead_for_puts), config, metrics=metrics, sleep=sleep
    )
    with pytest.raises(BackupFailed) as caught:
        await engine.backup(tree, name="one")
    assert retries(metrics, "backup") == 7
    assert "retry budget (7 retries) ran out" in str(caught.value)
    assert no_manifest(memory)


async def test_max_attempts_bounds_each_transfer(sleep: RecordingSleep) -> None:
    retrier = Retrier(
        RetryPolicy(max_attempts=2, base_delay=0.0), concurrency=1, metrics=Metrics(), sleep=sleep
    )
    calls = 0

    async def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise TransientStorageError("503 SlowDown")

    with pytest.raises(TransientStorageError, match="SlowDown"):
        await retrier.run(Transfer("backup", "upload", "f"), always_fails)
    # --max-retries 1 --retry-delay 0: Vitess's one immediate retry, exactly.
    assert calls == 2 and sleep.calls == [0.0]


async def test_the_first_attempt_counts_toward_max_time(sleep: RecordingSleep) -> None:
    """The first attempt runs before python-backoff's loop (the cheap path of a call that
    succeeds): its time still counts, so one slow failure past ``max_time`` is not retried."""
    policy = RetryPolicy(max_attempts=5, base_delay=0.0, max_time=0.05)
    metrics = Metrics()
    metrics.start("backup")
    retrier = Retrier(policy, concurrency=1, metrics=metrics, sleep=sleep)
    calls = 0

    async def slow_then_fails() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.08)
        raise TransientStorageError("503 SlowDown")

    with pytest.raises(TransientStorageError, match="SlowDown"):
        await retrier.run(Transfer("backup", "upload", "f"), slow_then_fails)
    assert calls == 1 and sleep.calls == [] and retries(metrics, "backup") == 0


async def test_retries_after_a_failed_first_attempt_are_logged_and_counted_once_each(
    sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    metrics.start("backup")
    retrier = Retrier(RetryPolicy(max_attempts=4), concurrency=2, metrics=metrics, sleep=sleep)
    failures = {"a": 2, "b": 0, "c": 3}

    def flaky(name: str) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            if failures[name]:
                failures[name] -= 1
                raise TransientStorageError(f"{name}: 503 SlowDown")
            return name

        return call

    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        done = await asyncio.gather(
            *(retrier.run(Transfer("backup", "upload", n), flaky(n)) for n in "abc")
        )
    assert done == ["a", "b", "c"]
    assert retries(metrics, "backup") == 5 == len(sleep.calls) == retrier.budget.spent
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry:")]
    assert (
        sorted(line.split(":")[1].strip() for line in lines) == ["upload a"] * 2 + ["upload c"] * 3
    )
    assert any("attempt 1/4 failed" in line for line in lines)
    assert any("attempt 3/4 failed" in line for line in lines)


def test_delay_is_full_jitter_under_a_capped_doubling() -> None:
    retrier = Retrier(RetryPolicy(base_delay=0.5, max_delay=3.0), concurrency=1, metrics=Metrics())
    for tries, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0), (5000, 3.0)]:
        draws = [retrier.delay_before_retry(tries) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling


async def test_a_fault_after_the_manifest_landed_commits_exactly_once(
    tree: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage()
    faulty = FaultyStorage(memory, rule=fail_times(1, "put", manifest_key("one"), "fail_after"))

    await BackupEngine(faulty, fast_config(), sleep=sleep).backup(tree, name="one")
    assert faulty.injected["fail_after"] == 1 and len(sleep.calls) == 1
    assert [b.name for b in await BackupEngine(memory).list_backups()] == ["one"]


async def test_chunk_uploads_are_idempotent_after_a_fault_after_the_put(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    memory = MemoryStorage()
    engine = BackupEngine(
        FaultyStorage(memory, rate=0.3, after_share=1.0, seed=3), fast_config(), sleep=sleep
    )
    await engine.backup(tree, name="one")
    assert sleep.calls  # faults happened, after each put had stored its chunk
    await BackupEngine(memory, fast_config()).restore("one", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    assert all(k == chunk_key(k.removeprefix("chunks/")) for k in memory.objects if "chunks/" in k)
