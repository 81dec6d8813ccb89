"""--bwlimit: the token bucket's arithmetic on an injected clock, and how the engine pays it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, ConfigError, FaultyStorage, MemoryStorage, Metrics
from asyncbackup.bandwidth import Bandwidth, parse_rate
from asyncbackup.layout import manifest_key
from asyncbackup.storage.faulty import Fault, Rule
from tests.conftest import RecordingSleep, assert_same_tree, fast_config

MiB = 2**20


class FakeTime:
    """A clock that only moves when someone sleeps: callers that take turns, one at a time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("65536", 65536),
        ("512K", 512 * 1024),
        ("10M", 10 * MiB),
        ("10MiB/s", 10 * MiB),
        ("10mb", 10 * MiB),
        ("1.5G", 1.5 * 2**30),
        (" 2 M ", 2 * MiB),
    ],
)
def test_rates_are_bytes_per_second_in_powers_of_1024(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "10X", "-1M", "0", "0.5", "1M/h", "M"])
def test_a_rate_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid rate"):
        parse_rate(text)


def test_a_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        Bandwidth(0)
    with pytest.raises(ConfigError, match="must not be negative"):
        Bandwidth(100, burst=-1)


async def test_callers_in_turn_get_exactly_the_rate() -> None:
    t = FakeTime()
    bandwidth = Bandwidth(1000, burst=0, clock=t.clock, sleep=t.sleep)
    for _ in range(4):
        assert await bandwidth.acquire(500) == 0.5
    assert t.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert t.now == 2.0  # 2,000 bytes at 1,000 bytes/s
    assert bandwidth.granted == 2000 and bandwidth.waited == 2.0


async def test_the_bucket_saves_up_to_its_burst_and_no_more() -> None:
    t = FakeTime()
    bandwidth = Bandwidth(1000, burst=500, clock=t.clock, sleep=t.sleep)
    assert await bandwidth.acquire(500) == 0.0  # it starts full
    assert await bandwidth.acquire(500) == 0.5
    t.now += 60  # a minute idle saves only the burst, not 60,000 bytes
    assert await bandwidth.acquire(1500) == 1.0
    assert await bandwidth.acquire(0) == 0.0


async def test_a_request_larger_than_the_bucket_waits_in_proportion() -> None:
    t = FakeTime()
    bandwidth = Bandwidth(100, burst=50, clock=t.clock, sleep=t.sleep)
    assert await bandwidth.acquire(1000) == pytest.approx(9.5)  # 950 bytes beyond the burst
    assert await bandwidth.acquire(100) == pytest.approx(1.0)


async def test_concurrent_callers_queue_in_order_and_the_last_waits_for_all() -> None:
    sleep = RecordingSleep()  # the clock stands still: all ten ask at the same instant
    bandwidth = Bandwidth(100, burst=0, clock=lambda: 0.0, sleep=sleep)
    await asyncio.gather(*(bandwidth.acquire(100) for _ in range(10)))
    assert sleep.calls == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


async def test_a_cancelled_wait_gives_its_tokens_back() -> None:
    never = asyncio.Event()
    calls: list[float] = []

    async def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 1:
            await never.wait()

    bandwidth = Bandwidth(100, burst=0, clock=lambda: 0.0, sleep=sleep)
    first = asyncio.create_task(bandwidth.acquire(100))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await bandwidth.acquire(100) == 1.0  # not 2.0: the cancelled 100 bytes were refunded
    assert bandwidth.granted == 100


def fail_first_put_of_each_chunk() -> tuple[dict[str, int], Rule]:
    seen: dict[str, int] = {}

    def rule(operation: str, key: str) -> Fault | None:
        if operation != "put" or not key.startswith("chunks/"):
            return None
        seen[key] = seen.get(key, 0) + 1
        return "fail_after" if seen[key] == 1 else None  # stored, yet reported failed

    return seen, rule


async def test_every_attempt_pays_so_retried_bytes_count(tree: Path, tmp_path: Path) -> None:
    memory = MemoryStorage()
    seen, rule = fail_first_put_of_each_chunk()
    faulty = FaultyStorage(memory, rule=rule)
    rate = 1 * MiB
    sleep = RecordingSleep()
    bandwidth = Bandwidth(rate, burst=0, clock=lambda: 0.0, sleep=sleep)
    metrics = Metrics()
    engine = BackupEngine(
        faulty, fast_config(), metrics=metrics, sleep=RecordingSleep(), bandwidth=bandwidth
    )
    summary = await engine.backup(tree, name="one")

    chunk_bytes = sum(len(v) for k, v in memory.objects.items() if k.startswith("chunks/"))
    manifest_bytes = len(memory.objects[manifest_key("one")])
    assert summary.retries == len(seen) == summary.chunks_uploaded
    assert bandwidth.granted == 2 * chunk_bytes + manifest_bytes  # each chunk went twice
    # The clock stood still, so each wait is the debt so far: the last is the whole job's.
    assert max(sleep.calls) == pytest.approx(bandwidth.granted / rate)
    throttled = metrics.registry.get_sample_value(
        "backup_throttled_seconds_total", {"operation": "backup"}
    )
    assert throttled is not None and throttled > 0
    assert throttled == pytest.approx(sum(sleep.calls))

    restore_bandwidth = Bandwidth(rate, clock=lambda: 0.0, sleep=RecordingSleep())
    restorer = BackupEngine(memory, fast_config(), bandwidth=restore_bandwidth)
    await restorer.restore("one", tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    # Every chunk is fetched once: dup-a.bin and dup-b.bin share theirs (10,000 bytes).
    assert restore_bandwidth.granted == summary.bytes - 10_000


async def test_waiting_for_tokens_holds_no_slot(tree: Path) -> None:
    """At concurrency 1, the first transfer's wait for tokens lasts until another transfer has
    stored a chunk: that can only happen if the waiting one holds no slot."""
    stored = asyncio.Event()

    class Signalling(MemoryStorage):
        async def put(
            self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
        ) -> None:
            await super().put(key, data, overwrite=overwrite, digest=digest)
            stored.set()

    waits = 0

    async def sleep(seconds: float) -> None:
        nonlocal waits
        waits += 1
        if waits == 1:
            await stored.wait()

    bandwidth = Bandwidth(1, burst=0, clock=lambda: 0.0, sleep=sleep)
    engine = BackupEngine(Signalling(), fast_config(concurrency=1), bandwidth=bandwidth)
    async with asyncio.timeout(10):
        summary = await engine.backup(tree, name="one")
    assert summary.chunks_uploaded > 1 and waits > 1


async def test_a_long_wait_for_tokens_is_not_an_attempt_timeout(tree: Path) -> None:
    bandwidth = Bandwidth(1, burst=0, clock=lambda: 0.0, sleep=lambda s: asyncio.sleep(0.2))
    engine = BackupEngine(
        MemoryStorage(), fast_config(concurrency=2, attempt_timeout=0.05), bandwidth=bandwidth
    )
    summary = await engine.backup(tree, name="one")
    assert summary.retries == 0  # 0.2 s waits under a 0.05 s attempt timeout, never cut


async def test_a_deep_verify_pays_for_each_chunk_it_downloads(tree: Path) -> None:
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config()).backup(tree, name="one")
    bandwidth = Bandwidth(MiB, clock=lambda: 0.0, sleep=RecordingSleep())
    report = await BackupEngine(memory, fast_config(), bandwidth=bandwidth).verify("one", deep=True)
    assert report.ok
    chunk_bytes = sum(len(v) for k, v in memory.objects.items() if k.startswith("chunks/"))
    assert bandwidth.granted == chunk_bytes  # each distinct chunk once, at its own length
