"""The sample tree round-trips through the memory store: the fixture itself is sound."""

from __future__ import annotations

from pathlib import Path

from asyncbackup import BackupEngine, MemoryStorage
from tests.conftest import RecordingSleep, assert_same_tree, fast_config, snapshot


async def test_round_trip_reproduces_every_detail(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    summary = await engine.backup(tree, name="one")
    restored = tmp_path / "restored"
    await engine.restore("one", restored)
    assert_same_tree(tree, restored)
    assert summary.files == 13 and summary.symlinks == 3
    assert b"sub/bytes-\xff\xfe/latin-\xe9.txt" in snapshot(restored)
