"""A prune killed with SIGKILL in the middle of a repack, through the command line, on the local
store and on S3 (moto): after the kill every chunk of every backup still reads back, and the
next prune passes the dead job's lock and finishes the work.

The kill comes at a state of the store the test watches for (a new pack stored, an INDEX
rewritten, an old pack deleted), not after a guessed delay."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, open_storage
from tests.conftest import fast_config
from tests.packed import drop_chunk_objects, pack_backup, pack_keys, unreadable_chunks
from tests.test_cli import EXIT_OK, cli
from tests.test_prune_kill import wait_until
from tests.test_prune_race import start
from tests.test_repack import a, b, retarget, write_files

KEPT = 4


async def packed_store(url: str, source: Path) -> tuple[set[str], set[str], bytes]:
    """Backup "old" (80 chunks in 8 packs), then KEPT backups that each keep every 4th of its
    chunks (so each of old's packs is about 75% unused once "old" goes) plus 3 of their own.
    Old's pack keys, every pack key, and the INDEX of the newest backup."""
    async with open_storage(url) as store:
        engine = BackupEngine(store, fast_config())
        write_files(source, a(80))
        await engine.backup(source, name="old")
        known = await pack_backup(store, "old", per_pack=10)
        old_packs = await pack_keys(store)
        for i in range(KEPT):
            retarget(source, a(80)[::4] + b(3 * KEPT)[3 * i : 3 * i + 3])
            await engine.backup(source, name=f"kept{i}")
            known.update(await pack_backup(store, f"kept{i}", per_pack=10, known=known))
        await drop_chunk_objects(store)
        index = await store.get(f"backups/kept{KEPT - 1}/INDEX")
        return old_packs, await pack_keys(store), index


def store_state(url: str) -> tuple[set[str], bytes]:
    async def read() -> tuple[set[str], bytes]:
        async with open_storage(url) as store:
            return await pack_keys(store), await store.get(f"backups/kept{KEPT - 1}/INDEX")

    return asyncio.run(read())


def problems(url: str) -> list[str]:
    async def check() -> list[str]:
        async with open_storage(url) as store:
            return await unreadable_chunks(store)

    return asyncio.run(check())


MOMENTS = ("new pack stored", "INDEX rewritten", "old pack deleted")


@pytest.fixture(
    params=[*(("local", m) for m in MOMENTS), ("s3", "INDEX rewritten")],  # S3: the slow one
    ids=lambda p: f"{p[0]}-{p[1].split()[0]}",
)
def store_and_moment(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    kind, moment = request.param
    if kind == "local":
        return str(tmp_path / "store"), moment
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/killed", moment


def test_a_prune_killed_mid_repack_leaves_every_backup_readable(
    store_and_moment: tuple[str, str], tmp_path: Path
) -> None:
    store_url, moment = store_and_moment
    old_packs, all_packs, index_before = asyncio.run(packed_store(store_url, tmp_path / "src"))

    def reached() -> bool:
        packs, index = store_state(store_url)
        if moment == "new pack stored":
            return bool(packs - all_packs)
        if moment == "INDEX rewritten":
            return index != index_before
        return bool(old_packs - packs)

    prune = start("prune", store_url, "--keep-last", str(KEPT), "--grace", "0s",
                  "--concurrency", "1", "--inject-latency", "150")  # fmt: skip
    try:
        wait_until(reached, moment)
    finally:
        prune.send_signal(signal.SIGKILL)
        prune.communicate()
    packs, _ = store_state(store_url)
    assert old_packs & packs, "killed after the repack finished: the test proves nothing"
    assert problems(store_url) == []

    again = cli("prune", store_url, "--keep-last", str(KEPT), "--grace", "0s")
    assert again.returncode == EXIT_OK, again.stderr
    assert f"its process {prune.pid} is gone from this host" in again.stderr
    assert problems(store_url) == []
    packs, _ = store_state(store_url)
    assert not old_packs & packs  # every old pack repacked, then deleted
    dry = cli("prune", store_url, "--keep-last", str(KEPT), "--grace", "0s", "--dry-run")
    assert "would delete 0 unused packs (0.0 MiB), would repack 0" in dry.stderr, dry.stderr


def test_bad_max_unused_is_a_usage_error(tmp_path: Path) -> None:
    for value in ("150%", "ten", "100"):
        result = cli("prune", tmp_path / "store", "--keep-last", "1", "--max-unused", value)
        assert result.returncode == 2, result.stderr
        assert f"invalid share '{value}'" in result.stderr
