"""`verify --deep` proves a restore would succeed, and `verify` with no name checks every backup,
reading each chunk once (issue 13, item 5)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from asyncbackup import BackupEngine, MemoryStorage
from asyncbackup.layout import manifest_key
from tests.conftest import SMALL_CHUNK, fast_config, make_tree
from tests.remote import StoreUnderTest
from tests.stores import WatchedStorage
from tests.test_cli import EXIT_FAILED, EXIT_OK, cli


def edit(store: MemoryStorage, name: str, change: Any) -> None:
    document = json.loads(store.objects[manifest_key(name)])
    change({e["path"]: e for e in document["entries"]})
    store.objects[manifest_key(name)] = json.dumps(document).encode()


async def test_a_file_that_names_another_files_chunk_fails_verify_deep_as_restore_does(
    any_store: StoreUnderTest, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_bytes(b"A" * 1000)
    (source / "b.txt").write_bytes(b"B" * 1000)  # the same size: the chunk fits
    (source / "big-1.bin").write_bytes(os.urandom(3 * SMALL_CHUNK))
    (source / "big-2.bin").write_bytes(os.urandom(3 * SMALL_CHUNK))
    async with any_store.store() as store:
        await BackupEngine(store, fast_config()).backup(source, name="b")
    key = "c/" + manifest_key("b")
    document = json.loads(await any_store.read(key))
    entries = {e["path"]: e for e in document["entries"]}
    entries["a.txt"]["chunks"] = entries["b.txt"]["chunks"]  # valid JSON; the chunk exists
    entries["big-1.bin"]["chunks"][1] = entries["big-2.bin"]["chunks"][1]
    await any_store.write(key, json.dumps(document).encode())
    url = any_store.url("c/")

    shallow = cli("verify", url, "b")
    assert shallow.returncode == EXIT_OK, shallow.stderr  # every chunk is there: only --deep sees
    deep = cli("verify", url, "b", "--deep")
    assert deep.returncode == EXIT_FAILED, deep.stderr
    for path in ("a.txt", "big-1.bin"):
        assert f"{path}: restore would refuse it: its chunks hold" in deep.stderr
    assert "2 files that would not restore" in deep.stderr
    assert "b.txt" not in deep.stderr and "big-2.bin" not in deep.stderr
    restore = cli("restore", url, "b", tmp_path / "target")  # what verify predicted
    assert restore.returncode == EXIT_FAILED
    assert "a.txt: restored 1000 bytes hashing to" in restore.stderr


async def test_verify_with_no_name_checks_every_backup_reading_each_chunk_once(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "source")
    memory = MemoryStorage()
    engine = BackupEngine(memory, fast_config())
    await engine.backup(source, name="one")
    (source / "new.bin").write_bytes(os.urandom(2 * SMALL_CHUNK))
    with (source / "big.bin").open("r+b") as f:
        f.write(b"changed")  # its first chunk changes, the other three are shared
    await engine.backup(source, name="two")
    await engine.backup(source, name="three")  # the same as two
    watched = WatchedStorage(memory)

    report = await BackupEngine(watched, fast_config()).verify(deep=True)

    assert report.ok and report.backups == ("one", "three", "two")
    gets = Counter(k for (op, k), n in watched.calls.items() if op == "get" for _ in range(n))
    chunk_gets = {k: n for k, n in gets.items() if k.startswith("chunks/")}
    stored = {k for k in memory.objects if k.startswith("chunks/")}
    assert set(chunk_gets) == stored and set(chunk_gets.values()) == {1}  # each, once
    assert report.chunks_checked == len(stored)

    # Damage in one backup only: named with the backup it is in; an unreadable MANIFEST too.
    edit(memory, "two", lambda e: e["new.bin"].update(size=e["new.bin"]["size"] - 1))
    memory.objects[manifest_key("one")] = b"{ not json"
    report = await BackupEngine(memory, fast_config()).verify(deep=True)
    assert set(report.unreadable) == {"one"} and "not valid JSON" in report.unreadable["one"]
    assert list(report.bad_files) == ["two:new.bin"]
    assert not report.ok

    result = cli("verify", "memory://x")  # an empty store: nothing to check, nothing wrong
    assert result.returncode == EXIT_OK, result.stderr


def test_verify_with_no_name_on_the_command_line(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    store = tmp_path / "store"
    for name in ("one", "two"):
        assert cli("backup", source, store, "--name", name).returncode == EXIT_OK
    result = cli("verify", store, "--deep")
    assert result.returncode == EXIT_OK, result.stderr
    assert "verify (deep) of 2 backups: all" in result.stderr
    (store / "backups" / "two" / "MANIFEST").write_text("{")
    broken = cli("verify", store)
    assert broken.returncode == EXIT_FAILED
    assert "backup two cannot be read:" in broken.stderr and "1 backups unreadable" in broken.stderr
