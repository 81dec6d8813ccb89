"""Chaos on the wire: the whole stack (engine, SDK, HTTP) against a real server through
``tests/proxy.py``, on S3 (moto) and on GCS (fake-gcs-server).

Every test runs once per store. The proxy counts the faults it injects, so each test can
compare them with the retries the engine counted: a fault retried silently by a layer below
ours, or never retried at all, shows up as a difference.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    EngineConfig,
    RetryPolicy,
    Storage,
    TransientStorageError,
)
from asyncbackup.storage.gcs import GCSStorage
from asyncbackup.storage.s3 import S3Storage
from tests.conftest import SMALL_CHUNK, RecordingSleep, Report, assert_same_tree, fast_config
from tests.proxy import (
    WIRE_FAULTS,
    Fault,
    FaultProxy,
    Rule,
    always,
    first_of,
    first_times,
    random_faults,
)
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage
from tests.test_s3 import connections_in_use

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def proxy(remote: StoreUnderTest) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the server that injects nothing until a test sets its ``rule``."""
    assert remote.server is not None
    async with FaultProxy(remote.server.port, lambda n, method, path: None) as running:
        yield running


def held_connections(store: Storage) -> int:
    """Connections taken from the SDK's pool and not given back (its internals: tests only)."""
    if isinstance(store, S3Storage):
        return connections_in_use(store)
    assert isinstance(store, GCSStorage) and store.session is not None
    connector: Any = store.session.connector
    return len(connector._acquired)


def source_tree(root: Path, *, files: int, big_chunks: int, seed: int) -> Path:
    """``files`` small distinct files and one file of ``big_chunks`` chunks."""
    rnd = random.Random(seed)
    for i in range(files):
        directory = root / f"d{i % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:03d}.bin").write_bytes(rnd.randbytes(500 + i * 37))
    (root / "big.bin").write_bytes(rnd.randbytes(big_chunks * SMALL_CHUNK - 99))
    return root


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def retries_counted(engine: BackupEngine, operation: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "backup_retry_attempts_total", {"operation": operation}
    )
    return value or 0.0


# Retries: every fault is one counted retry, and the data comes back byte for byte.


async def test_five_percent_of_requests_failing_every_way(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep,
    report: Report, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    source = source_tree(tmp_path / "source", files=150, big_chunks=12, seed=5)
    faults = (*remote.throttles, *WIRE_FAULTS, Fault("stall_body"))
    proxy.rule = random_faults(0.05, faults, seed=2026)
    # A stalled body ends only by the attempt's timeout. On a loaded machine a plain request
    # may outlast it too: such a retry, caused by no fault, is told apart by its message
    # below, so the counts hold whatever the load.
    config = fast_config(concurrency=8, budget=1000, attempt_timeout=2.5)
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with remote.store(proxy) as store:
        engine = BackupEngine(store, config, sleep=sleep)
        backup = await engine.backup(source, name="b")
        restore = await engine.restore("b", tmp_path / "restored")
        assert held_connections(store) == 0
    injected = sum(proxy.injected.values())
    stalled = proxy.injected.get("stall_body", 0)
    assert injected >= 0.03 * len(proxy.requests), (proxy.injected, len(proxy.requests))
    assert len(proxy.injected) >= 4, proxy.injected  # throttles, resets, cut and stalled bodies
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry: ")]
    timed_out = sum("no answer within" in line for line in retries)
    # Each fault was one retry of ours: none retried silently below us, none given up on. A
    # stalled body is retried after a timeout; every other fault after an error of its own.
    assert backup.retries + restore.retries == len(retries)
    assert len(retries) - timed_out == injected - stalled, (proxy.injected, retries)
    assert timed_out >= stalled, (proxy.injected, retries)
    assert retries_counted(engine, "backup") == backup.retries
    assert retries_counted(engine, "restore") == restore.retries
    assert_same_tree(source, tmp_path / "restored")
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(proxy.injected.items()))
    report(
        f"{len(proxy.requests)} requests, {injected} faults ({kinds}), "
        f"{backup.retries + restore.retries} retries counted "
        f"({timed_out - stalled} more after a slow answer no fault caused), "
        f"{tree_bytes(source)} bytes in {backup.files} files restored identical"
    )


async def test_each_throttle_answer_is_a_named_transient_error(
    remote: StoreUnderTest, proxy: FaultProxy
) -> None:
    async with remote.store(proxy) as store:
        for fault in remote.throttles:
            proxy.rule = always(fault)
            # S3 errors name their code; GCS errors their status and message.
            code = re.search(rb"<Code>(\w+)</Code>", fault.body)
            says = code.group(1).decode() if code else f"HTTP {fault.status}"
            with pytest.raises(TransientStorageError, match=says):
                await store.get("chunks/a")
    assert proxy.injected == {"status": 3}


# Isolation: one chunk's failures do not hold up the other transfers.


STUCK_AFTER = 60.0
"""Seconds the failing chunk's backoff waits for the other chunks before it calls the pool
stuck: a guard against a deadlock, not a speed bound (a clean upload of them all takes about a
second), so a loaded machine cannot fail the test."""


async def test_a_chunk_that_keeps_failing_does_not_hold_up_the_others(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, report: Report
) -> None:
    source = source_tree(tmp_path / "source", files=60, big_chunks=1, seed=8)
    (source / "a-first.bin").write_bytes(b"the chunk that fails three times")
    slow_key = "chunks/" + hashlib.sha256(b"the chunk that fails three times").hexdigest()
    # One slot: if a retry's backoff kept its slot, no other upload could run during it.
    config = EngineConfig(  # one object per chunk (no packs): each chunk its own transfer
        concurrency=1,
        chunk_size=SMALL_CHUNK,
        retry=RetryPolicy(max_attempts=5, budget=100),
        pack_threshold=0,
    )
    async with remote.store(proxy, prefix="clean/") as inner:
        clean = WatchedStorage(inner)
        await BackupEngine(clean, config).backup(source, name="b")
    others = {key for key in clean.stored_at if key.startswith("chunks/")} - {slow_key}

    proxy.rule = first_times(
        3, remote.throttles[0], method=remote.upload_method, path=remote.upload_of(slow_key)
    )
    stored_before_each_backoff: list[int] = []
    stuck = False
    async with remote.store(proxy, prefix="faulted/") as inner:
        faulted = WatchedStorage(inner)

        def others_stored() -> int:
            return sum(1 for kind, key in faulted.events if kind == "stored" and key in others)

        async def wait_for_the_others(seconds: float) -> None:
            """Only the failing chunk retries: each of its backoffs ends once every other
            chunk is stored, which can happen only while the backoff leaves the one slot free."""
            nonlocal stuck
            stored_before_each_backoff.append(others_stored())
            deadline = time.monotonic() + STUCK_AFTER
            while not stuck and others_stored() < len(others):
                stuck = time.monotonic() > deadline
                await asyncio.sleep(0.01)

        engine = BackupEngine(faulted, config, sleep=wait_for_the_others)
        summary = await engine.backup(source, name="b")

    assert summary.retries == 3 and proxy.injected == {"status": 3}
    assert faulted.calls["put", slow_key] == 4  # three refused attempts, then stored
    assert len(stored_before_each_backoff) == 3
    # The failing chunk went first, so most of the others were still to upload when it failed.
    first_backoff_at = stored_before_each_backoff[0]
    assert first_backoff_at < len(others) // 2, stored_before_each_backoff
    assert not stuck, "no other chunk could be stored while the failing one waited to retry"
    # Every other chunk was stored while the failing one was still retrying, each once.
    stored = [key for kind, key in faulted.events if kind == "stored"]
    assert set(stored[: stored.index(slow_key)]) >= others
    assert sorted(k for k in stored if k.startswith("chunks/")) == sorted(others | {slow_key})
    report(
        f"concurrency 1, one chunk refused 3 times: {len(others) - first_backoff_at} of the other "
        f"{len(others)} chunks were stored during its backoffs, all before its 4th attempt"
    )


# Timeouts: a request that never answers is cut and retried; the job does not hang.


async def test_hung_uploads_and_downloads_are_cut_and_retried(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    source = source_tree(tmp_path / "source", files=12, big_chunks=3, seed=11)
    upload, download = remote.upload_of("c/chunks/"), remote.download_of("c/chunks/")
    faults = first_of(
        first_times(1, Fault("hang"), method=remote.upload_method, path=upload),
        first_times(1, Fault("hang"), method="GET", path=download),
        first_times(1, Fault("stall_body"), method="GET", path=download),
    )
    hung: list[str] = []  # the chunk each fault hit

    def rule(n: int, method: str, path: str) -> Fault | None:
        fault = faults(n, method, path)
        if fault is not None:
            hung.append(re.findall(r"[0-9a-f]{64}", path)[0])
        return fault

    proxy.rule = rule
    config = fast_config(concurrency=4, attempt_timeout=2.0)  # 100 times a normal request
    caplog.set_level(logging.WARNING, logger="asyncbackup")
    async with remote.store(proxy) as store:
        engine = BackupEngine(store, config, sleep=sleep)
        backup = await engine.backup(source, name="b")
        restore = await engine.restore("b", tmp_path / "restored")
        assert held_connections(store) == 0
    assert proxy.injected == {"hang": 2, "stall_body": 1}
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry: ")]
    # Each hung request was cut by the attempt timeout and retried. A plain request a loaded
    # machine slowed past the timeout is retried the same way: such an extra retry is allowed,
    # an error of any other kind is not.
    assert all("no answer within 2s" in line for line in retries), retries
    for chunk in hung:
        assert any(chunk[:12] in line for line in retries), (chunk, retries)  # its short name
    assert backup.retries + restore.retries == len(retries) >= 3
    assert backup.retries >= 1 and restore.retries >= 2
    assert_same_tree(source, tmp_path / "restored")


# The store goes down: the job gives up within its retry budget, and commits nothing.


async def run_cli(*args: str | Path, env: dict[str, str]) -> tuple[int, str]:
    """The CLI in a subprocess, without blocking the loop the proxy runs on."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncbackup", *map(str, args),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, err.decode(errors="replace")


def down_from_the_first_upload(remote: StoreUnderTest, fault: Fault) -> Rule:
    """The store answers the job's first listings, then goes down: every request fails."""
    down = False

    def rule(n: int, method: str, path: str) -> Fault | None:
        nonlocal down
        down = down or method == remote.upload_method
        return fault if down else None

    return rule


@pytest.mark.parametrize("down", ["throttled", "reset"])
async def test_a_store_that_is_down_ends_the_job_within_its_budget(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, down: str, report: Report
) -> None:
    source = source_tree(tmp_path / "source", files=40, big_chunks=2, seed=3)
    async with remote.store(None) as direct:
        await direct.put("chunks/earlier", b"a chunk from an earlier backup")
    fault = remote.throttles[0] if down == "throttled" else Fault("reset")
    proxy.rule = down_from_the_first_upload(remote, fault)
    budget, concurrency = 12, 4
    started = time.monotonic()
    code, err = await run_cli(
        "backup", source, remote.url("c/"), "--name", "b", "--chunk-size", "64K",
        "--concurrency", str(concurrency), "--retry-budget", str(budget), "--retry-delay", "0.05",
        "--max-retries", "50",  # so that the budget, not a transfer's own limit, ends the job
        env=remote.cli_env(proxy),
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert code == 1, err
    assert f"retry budget ({budget} retries) ran out" in err
    assert "the store looks down" in err
    # Each transfer in flight sent one first attempt; every request after those spent the
    # budget (the first requests were the listings, before the store went down).
    failed = sum(proxy.injected.values())
    assert budget < failed <= budget + 1 + concurrency, proxy.requests
    assert await remote.keys("c/backups/") == []
    assert await remote.keys("c/chunks/") == ["c/chunks/earlier"]  # nothing lost either
    report(f"gave up after {failed} failed requests in {seconds:.1f} s (budget {budget}), exit 1")


# A fault after the server acted is harmless: the retry stores the same bytes again.


async def test_a_reset_after_each_chunk_was_stored_is_harmless(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep,
    report: Report,
) -> None:  # fmt: skip
    source = source_tree(tmp_path / "source", files=20, big_chunks=4, seed=4)
    seen: set[str] = set()

    def reset_each_chunk_once(n: int, method: str, path: str) -> Fault | None:
        if method == remote.upload_method and "chunks" in path and path not in seen:
            seen.add(path)
            return Fault("reset_late")
        return None

    proxy.rule = reset_each_chunk_once
    async with remote.store(proxy) as store:
        engine = BackupEngine(store, fast_config(), sleep=sleep)
        backup = await engine.backup(source, name="b")
        await engine.restore("b", tmp_path / "restored")
    assert backup.retries == backup.chunks_uploaded == len(seen) == 24
    chunk_uploads = [p for m, p in proxy.requests if m == remote.upload_method and "chunks" in p]
    assert len(chunk_uploads) == 2 * len(seen)  # the server got every chunk twice...
    assert len(await remote.keys("c/chunks/")) == len(seen)  # ...and holds each once
    assert_same_tree(source, tmp_path / "restored")
    report(f"{len(seen)} chunks each stored twice, {backup.retries} retries, restore identical")


# The commit: a fault on the MANIFEST write commits the backup exactly once, or not at all.


def manifest_faults(remote: StoreUnderTest, fault: Fault, times: int = 1) -> Rule:
    return first_times(
        times, fault, method=remote.upload_method, path=remote.upload_of("backups/b/MANIFEST")
    )


@pytest.mark.parametrize("kind", ["reset", "reset_late", "cut_request", "cut_body", "status"])
async def test_a_fault_on_the_manifest_write_commits_exactly_once(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep, kind: str
) -> None:
    source = source_tree(tmp_path / "source", files=10, big_chunks=2, seed=9)
    fault = remote.throttles[0] if kind == "status" else Fault(kind)
    proxy.rule = manifest_faults(remote, fault)
    async with remote.store(proxy) as store:
        engine = BackupEngine(store, fast_config(), sleep=sleep)
        backup = await engine.backup(source, name="b")
        listed = await engine.list_backups()
        await engine.restore("b", tmp_path / "restored")
    assert sum(proxy.injected.values()) == 1 and backup.retries == 1
    assert [(info.name, info.problem, info.files) for info in listed] == [("b", "", 11)]
    keys = await remote.keys("c/backups/")  # one MANIFEST, and its source mark (catalog.py)
    assert [k for k in keys if "/SOURCE." not in k] == ["c/backups/b/MANIFEST"]
    assert len(keys) == 2
    assert_same_tree(source, tmp_path / "restored")


async def test_a_manifest_write_that_keeps_failing_commits_nothing(
    remote: StoreUnderTest, proxy: FaultProxy, tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = source_tree(tmp_path / "source", files=10, big_chunks=2, seed=10)
    proxy.rule = manifest_faults(remote, Fault("cut_request"), times=100)
    async with remote.store(proxy) as store:
        engine = BackupEngine(store, fast_config(max_attempts=3), sleep=sleep)
        with pytest.raises(BackupFailed) as caught:
            await engine.backup(source, name="b")
        assert await engine.list_backups() == []
    assert proxy.injected == {"cut_request": 3}
    message = str(caught.value)
    assert message.startswith("backup failed, its commit was not confirmed: backups/b/MANIFEST")
    assert "'asyncbackup list' shows whether backup b is there" in message
    assert await remote.keys("c/backups/") == []  # not even half a MANIFEST
    assert len(await remote.keys("c/chunks/")) == 12  # the chunks stay for the next run
