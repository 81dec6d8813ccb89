"""Jobs killed with SIGKILL mid-way, through the command line, on the local store and on S3
(moto): the lock they leave is recognised as stale (its process is gone from this host), the
next job says so and proceeds, every listed backup restores, and ``unlock`` removes the lock."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, open_storage
from tests.test_cli import EXIT_OK, cli, list_json
from tests.test_prune_race import content, restore_and_compare, start

CHUNK_OBJECTS = ("--chunk-size", "64K", "--pack-threshold", "0")
"""Backups of one object per chunk: these tests watch chunks appear and go under ``chunks/``
(a prune killed mid-repack of packs: ``test_repack_kill.py``)."""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (a state of the store, not a guess at timing) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def keys_under(url: str, prefix: str) -> list[str]:
    async def keys() -> list[str]:
        async with open_storage(url) as store:
            found: list[str] = []
            token: str | None = None
            while True:
                page, token = await store.list_page(prefix, token)
                found += page
                if token is None:
                    return found

    return asyncio.run(keys())


async def refs_of(url: str, name: str) -> set[str]:
    async with open_storage(url) as store:
        return (await BackupEngine(store).manifest(name)).refs()


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/killed"


def test_a_prune_killed_mid_sweep_leaves_a_stale_lock_the_next_backup_passes(
    store_url: str, tmp_path: Path
) -> None:
    sources = {f"old{i}": content(tmp_path / f"old{i}", f"old{i}", files=25) for i in range(3)}
    sources["keep"] = content(tmp_path / "keep", "keep")
    for name in sources:
        assert cli("backup", sources[name], store_url, "--name", name, *CHUNK_OBJECTS,
                   "-q").returncode == EXIT_OK  # fmt: skip
    chunks = len(keys_under(store_url, "chunks/"))
    prune = start("prune", store_url, "--keep-last", "1", "--group-by", "host", "--grace", "0s",
                  "--concurrency", "1", "--inject-latency", "30")  # fmt: skip
    try:
        wait_until(lambda: len(keys_under(store_url, "chunks/")) < chunks - 5, "it sweeps")
    finally:
        prune.send_signal(signal.SIGKILL)
        prune.communicate()  # reaped: its pid is gone from this host
    keep_chunks = {"chunks/" + r for r in asyncio.run(refs_of(store_url, "keep"))}
    assert set(keys_under(store_url, "chunks/")) - keep_chunks  # killed before it finished
    [lock] = keys_under(store_url, "locks/")

    again = content(tmp_path / "again", "old0", files=25)  # reuses chunks the prune left or not
    backup = cli("backup", again, store_url, "--name", "after", *CHUNK_OBJECTS)
    assert backup.returncode == EXIT_OK, backup.stderr
    assert f"backup ignores the stale lock of prune (exclusive lock {lock})" in backup.stderr
    assert f"its process {prune.pid} is gone from this host" in backup.stderr
    assert "'asyncbackup unlock STORE' removes it" in backup.stderr

    listed = [str(b["name"]) for b in list_json(store_url)]
    assert "after" in listed and "keep" in listed
    expected = {**sources, "after": again}
    for name in listed:
        out = tmp_path / "out" / name
        assert asyncio.run(restore_and_compare(store_url, name, expected[name], out)), name

    unlock = cli("unlock", store_url)
    assert unlock.returncode == EXIT_OK, unlock.stderr
    assert unlock.stdout.startswith(f"removed prune (exclusive lock {lock}) of pid {prune.pid}")
    assert keys_under(store_url, "locks/") == []


def test_a_backup_killed_mid_upload_leaves_a_stale_lock_the_next_prune_passes(
    store_url: str, tmp_path: Path
) -> None:
    keep = content(tmp_path / "keep", "keep")
    assert cli("backup", keep, store_url, "--name", "keep", *CHUNK_OBJECTS).returncode == 0
    kept_chunks = set(keys_under(store_url, "chunks/"))
    big = content(tmp_path / "big", "big", files=100)
    backup = start("backup", big, store_url, "--name", "killed", *CHUNK_OBJECTS,
                   "--concurrency", "1", "--inject-latency", "30")  # fmt: skip
    try:
        wait_until(lambda: len(keys_under(store_url, "chunks/")) > len(kept_chunks) + 5, "uploads")
    finally:
        backup.send_signal(signal.SIGKILL)
        backup.communicate()
    [lock] = keys_under(store_url, "locks/")
    orphans = set(keys_under(store_url, "chunks/")) - kept_chunks
    assert orphans

    prune = cli("prune", store_url, "--keep-last", "1", "--grace", "0s")
    assert prune.returncode == EXIT_OK, prune.stderr
    assert f"prune ignores the stale lock of backup (shared lock {lock})" in prune.stderr
    assert f"its process {backup.pid} is gone from this host" in prune.stderr
    assert set(keys_under(store_url, "chunks/")) == kept_chunks  # the killed run's went
    assert [str(b["name"]) for b in list_json(store_url)] == ["keep"]
    assert asyncio.run(restore_and_compare(store_url, "keep", keep, tmp_path / "out"))
    assert cli("unlock", store_url).returncode == EXIT_OK
    assert keys_under(store_url, "locks/") == []
