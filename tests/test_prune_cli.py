"""``asyncbackup prune`` as a user runs it, on a local store, S3 (moto) and GCS (fake-gcs-server).

The backups are made through the engine with a chosen clock, so they are days apart; everything
after that goes through the command line.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, open_storage
from asyncbackup.layout import manifest_key
from tests.conftest import SMALL_CHUNK, assert_same_tree, fast_config
from tests.test_cli import EXIT_FAILED, EXIT_OK, cli, list_json

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
WHEN = {
    "mon": NOW - timedelta(days=3),
    "tue": NOW - timedelta(days=2),
    "wed-a": NOW - timedelta(days=1, hours=2),
    "wed-b": NOW - timedelta(days=1),
}


def source_of(root: Path, name: str) -> Path:
    root.mkdir(parents=True)
    (root / "shared.txt").write_text("in every backup\n" * 100)
    (root / "unique.bin").write_bytes(random.Random(name).randbytes(2 * SMALL_CHUNK + 5))
    (root / "notes.txt").write_text(f"backup {name}\n" * 2000)  # compressible
    return root


def fixed(when: datetime) -> Callable[[], datetime]:
    return lambda: when


async def make_backups(url: str, tmp_path: Path) -> dict[str, Path]:
    sources = {}
    async with open_storage(url) as store:
        for name, when in WHEN.items():
            source = source_of(tmp_path / "src" / name, name)
            engine = BackupEngine(store, fast_config(), clock=fixed(when))
            await engine.backup(source, name=name)
            sources[name] = source
    return sources


async def store_state(url: str) -> tuple[set[str], set[str]]:
    """(every key under chunks/, every chunk key a remaining backup names)."""
    async with open_storage(url) as store:
        engine = BackupEngine(store)
        keys, _ = await store.list_page("chunks/")
        named: set[str] = set()
        for info in await engine.list_backups():
            named |= {"chunks/" + r for r in (await engine.manifest(info.name)).refs()}
        return set(keys), named


@pytest.fixture(params=["local", "s3", "gcs"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    bucket: str = request.getfixturevalue(f"{request.param}_bucket")
    return f"{'s3' if request.param == 's3' else 'gs'}://{bucket}/prune"


def test_prune_keeps_what_it_promises_and_every_kept_backup_restores(
    store_url: str, tmp_path: Path
) -> None:
    sources = asyncio.run(make_backups(store_url, tmp_path))
    chunks_before, _ = asyncio.run(store_state(store_url))

    # Each backup has a source of its own: grouped by host alone, they are one group.
    policy = ("--keep-last", "1", "--keep-daily", "2", "--grace", "0", "--group-by", "host")
    group = f" [host {socket.gethostname()}]"
    dry = cli("prune", store_url, *policy, "--dry-run")
    assert dry.returncode == EXIT_OK, dry.stderr
    assert dry.stdout.splitlines() == [
        f"keep wed-b {WHEN['wed-b'].isoformat(timespec='seconds')} "
        f"(last 1, daily {WHEN['wed-b'].date()}){group}",
        f"would remove wed-a {WHEN['wed-a'].isoformat(timespec='seconds')}{group}",
        f"keep tue {WHEN['tue'].isoformat(timespec='seconds')} (daily {WHEN['tue'].date()}){group}",
        f"would remove mon {WHEN['mon'].isoformat(timespec='seconds')}{group}",
    ]
    assert "would delete 8 unused chunks" in dry.stderr  # 4 unique chunks each of mon, wed-a
    assert "nothing deleted" in dry.stderr
    assert asyncio.run(store_state(store_url))[0] == chunks_before
    assert [b["name"] for b in list_json(store_url)] == ["mon", "tue", "wed-a", "wed-b"]

    pruned = cli("prune", store_url, *policy)
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert "remove mon" in pruned.stdout and "remove wed-a" in pruned.stdout
    assert "prune: kept 2 backups, removed 2; deleted 8 unused chunks" in pruned.stderr
    assert [b["name"] for b in list_json(store_url)] == ["tue", "wed-b"]
    chunks_after, named = asyncio.run(store_state(store_url))
    assert chunks_after == named  # exactly what the kept backups need, nothing else
    assert len(chunks_before - chunks_after) == 8

    for name in ("tue", "wed-b"):
        restored = cli("restore", store_url, name, tmp_path / "out" / name)
        assert restored.returncode == EXIT_OK, restored.stderr
        assert_same_tree(sources[name], tmp_path / "out" / name)

    again = cli("prune", store_url, *policy)
    assert again.returncode == EXIT_OK, again.stderr
    assert "removed 0; deleted 0 unused chunks" in again.stderr


def test_the_default_grace_period_spares_chunks_just_written(tmp_path: Path) -> None:
    store_url = str(tmp_path / "store")
    asyncio.run(make_backups(store_url, tmp_path))
    chunks_before, _ = asyncio.run(store_state(store_url))
    pruned = cli("prune", store_url, "--keep-last", "1", "--group-by", "none")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert [b["name"] for b in list_json(store_url)] == ["wed-b"]
    assert "deleted 0 unused chunks" in pruned.stderr
    assert "12 unused chunks" in pruned.stderr and "younger than the grace period" in pruned.stderr
    assert asyncio.run(store_state(store_url))[0] == chunks_before


def test_a_corrupt_manifest_stops_prune_and_nothing_is_deleted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    asyncio.run(make_backups(str(store), tmp_path))
    (store / manifest_key("tue")).write_text('{"format_version": 1, "entr')
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    result = cli("prune", store, "--keep-last", "1", "--grace", "0")
    assert result.returncode == EXIT_FAILED
    assert "prune stopped and deleted nothing: the MANIFEST of backup 'tue'" in result.stderr
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_prune_of_compressed_backups_frees_the_compressed_chunks(tmp_path: Path) -> None:
    # Chunk objects (packs off): prune of packs is tested with repacking.
    store = tmp_path / "store"
    for name in ("one", "two"):
        backup = cli(
            "backup", source_of(tmp_path / name, name), store, "--name", name,
            "--chunk-size", "64K", "--compression", "zstd", "--pack-threshold", "0",
        )  # fmt: skip
        assert backup.returncode == EXIT_OK, backup.stderr
    listing = json.loads(cli("list", store, "--json").stdout)
    assert [b["name"] for b in listing] == ["one", "two"]
    assert cli("delete", store, "one").returncode == EXIT_OK
    pruned = cli("prune", store, "--keep-last", "1", "--grace", "0")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    chunks, named = asyncio.run(store_state(str(store)))
    assert chunks == named and any(k.endswith(".zst") for k in chunks)
    restored = cli("restore", store, "two", tmp_path / "out")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(tmp_path / "two", tmp_path / "out")
