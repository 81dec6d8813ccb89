"""Embedding in a service: the engine's own thread pool, metrics that two engines share a
registry with, list counted as list, and the aiohttp example of docs/library.md, run."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from asyncbackup import BackupEngine, ConfigError, LocalStorage, Metrics, RetentionPolicy
from examples.service import make_app, seconds_until
from tests.conftest import assert_same_tree, fast_config

ROOT = Path(__file__).resolve().parents[1]


class CountingExecutor(ThreadPoolExecutor):
    """A thread pool that counts what it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=4, thread_name_prefix="counted")
        self.calls = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


async def every_operation(engine: BackupEngine, source: Path, target: Path) -> None:
    """Backup twice, list, show, diff, verify deep, restore, cat, delete, prune."""
    first = (await engine.backup(source, name="one")).name
    await engine.backup(source, name="two")
    assert [b.name for b in await engine.list_backups()] == ["one", "two"]
    await engine.manifest(first)
    await engine.diff("one", "two")
    assert (await engine.verify(first, deep=True)).ok
    await engine.restore(first, target)
    pieces: list[bytes] = []

    async def keep(data: bytes) -> None:
        pieces.append(data)

    big = max((p for p in source.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    await engine.restore_file(first, big.relative_to(source).as_posix(), keep)
    assert b"".join(pieces) == big.read_bytes()
    await engine.delete("one")
    await engine.prune(RetentionPolicy(keep_last=1), grace=0)


async def test_the_engine_never_uses_the_loops_default_executor(tree: Path, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    default = CountingExecutor()
    loop.set_default_executor(default)
    engine = BackupEngine(LocalStorage(tmp_path / "store"), fast_config())
    await every_operation(engine, tree, tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    assert default.calls == 0  # a service's own to_thread calls never queue behind ours
    for _ in range(200):  # each call's pool is shut down: its threads end once idle
        if not [t for t in threading.enumerate() if t.name.startswith("asyncbackup")]:
            break
        await asyncio.sleep(0.01)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("asyncbackup")]


async def test_a_given_executor_runs_the_engines_thread_calls(tree: Path, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    default = CountingExecutor()
    loop.set_default_executor(default)
    mine = CountingExecutor()
    engine = BackupEngine(LocalStorage(tmp_path / "store"), fast_config(), executor=mine)
    await every_operation(engine, tree, tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")
    assert mine.calls > 0 and default.calls == 0
    assert mine.submit(sum, [1, 2]).result() == 3  # still the caller's: not shut down
    mine.shutdown()


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


async def test_two_engines_on_one_registry_export_apart(tree: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    periodic = BackupEngine(
        LocalStorage(tmp_path / "a"), fast_config(),
        metrics=Metrics(registry, labels={"engine": "periodic"}),
    )  # fmt: skip
    on_demand = BackupEngine(
        LocalStorage(tmp_path / "b"), fast_config(),
        metrics=Metrics(registry, labels={"engine": "on-demand"}),
    )  # fmt: skip
    files = sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    await periodic.backup(tree, name="p1")
    await periodic.backup(tree, name="p2")
    await on_demand.backup(tree, name="d1")
    done = samples(registry, "backup_files_total")
    key = (("engine", "{}"), ("operation", "backup"), ("outcome", "done"))
    by_engine = {
        e: done[tuple((k, v.format(e)) for k, v in key)] for e in ("periodic", "on-demand")
    }
    assert by_engine == {"periodic": 2 * files, "on-demand": files}
    success = samples(registry, "backup_last_success_timestamp_seconds")
    assert {dict(k)["engine"] for k in success} == {"periodic", "on-demand"}


def test_metrics_labels_must_agree_on_one_registry_and_not_shadow_ours() -> None:
    registry = CollectorRegistry()
    Metrics(registry, labels={"engine": "a"})
    with pytest.raises(ConfigError, match=r"already holds asyncbackup's metrics with the labels"):
        Metrics(registry, labels={"service": "x"})
    with pytest.raises(ConfigError, match="'operation' is reserved"):
        Metrics(CollectorRegistry(), labels={"operation": "x"})


async def test_list_is_counted_as_its_own_operation(tree: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    engine = BackupEngine(LocalStorage(tmp_path / "s"), fast_config(), metrics=Metrics(registry))
    await engine.backup(tree, name="b")
    await engine.list_backups()
    requests = samples(registry, "backup_chunk_duration_seconds_count")
    operations = {dict(k)["operation"]: v for k, v in requests.items()}
    assert operations["list"] >= 2  # the listing and the MANIFEST read
    assert "verify" not in operations


def test_seconds_until_the_next_run() -> None:
    now = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
    assert seconds_until(2, now) == 1800
    assert seconds_until(1, now) == 23.5 * 3600


async def test_the_aiohttp_example_backs_up_on_demand_and_serves_metrics(
    tree: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    runner = web.AppRunner(make_app(str(store), tree))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            async with client.post("/backup") as answer:
                assert answer.status == 200
                name = (await answer.json())["name"]
            async with client.get("/metrics") as answer:
                text = await answer.text()
    finally:
        await runner.cleanup()  # cancels the nightly schedule, closes the store
    families = {f.name: f for f in text_string_to_metric_families(text)}
    success = families["backup_last_success_timestamp_seconds"].samples
    assert [s.labels for s in success] == [{"engine": "nightly", "operation": "backup"}]
    restorer = BackupEngine(LocalStorage(store), fast_config())
    await restorer.restore(name, tmp_path / "out")
    assert_same_tree(tree, tmp_path / "out")


def test_docs_library_md_shows_the_example_as_it_is() -> None:
    doc = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    example = (ROOT / "examples" / "service.py").read_text(encoding="utf-8")
    assert example in blocks, "docs/library.md must show examples/service.py whole"
