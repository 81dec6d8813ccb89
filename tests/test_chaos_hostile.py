"""Hostile input, through the CLI, on every kind of store: a MANIFEST edited to write outside
the target, a chunk whose bytes were altered in the store, and a source file that grows while
it is read."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupEngine
from asyncbackup.manifest_encoding import decode
from tests.conftest import SMALL_CHUNK, fast_config, snapshot
from tests.remote import StoreUnderTest
from tests.test_bad_input import assert_no_half_file
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, cli

MANIFEST = "c/backups/b/MANIFEST"


async def backed_up(store: StoreUnderTest, tmp_path: Path) -> Path:
    """A small tree backed up as ``b`` under the store's prefix ``c/``; the tree's path."""
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "d" / "f.txt").write_text("payload\n")
    (source / "big.bin").write_bytes(os.urandom(3 * SMALL_CHUNK))
    async with store.store() as target_store:
        await BackupEngine(target_store, fast_config()).backup(source, name="b")
    return source


async def edit_manifest(store: StoreUnderTest, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(decode(await store.read(MANIFEST), where="test"))
    edit(document)
    await store.write(MANIFEST, json.dumps(document).encode())


def file_entry(document: dict[str, Any], path: str) -> dict[str, Any]:
    [entry] = [e for e in document["entries"] if e["path"] == path]
    assert isinstance(entry, dict)
    return entry


def restore(store: StoreUnderTest, target: Path) -> tuple[int, str]:
    result = cli("restore", store.url("c/"), "b", target)
    return result.returncode, result.stderr


@pytest.mark.parametrize("where", ["../outside", "absolute", "beneath-a-link"])
async def test_a_manifest_that_writes_outside_the_target_is_refused(
    any_store: StoreUnderTest, tmp_path: Path, where: str
) -> None:
    await backed_up(any_store, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()

    def edit(document: dict[str, Any]) -> None:
        entry = file_entry(document, "d/f.txt")
        if where == "../outside":
            entry["path"] = "../outside/evil"
        elif where == "absolute":
            entry["path"] = str(outside / "evil")
        else:  # a link to outside first, then a file beneath it
            link = {"path": "link", "type": "symlink", "mode": 0o777, "mtime_ns": 0}
            document["entries"] += [dict(link, target=str(outside)), dict(entry, path="link/evil")]

    await edit_manifest(any_store, edit)
    target = tmp_path / "target"
    before = snapshot(tmp_path)
    code, err = restore(any_store, target)
    assert code == EXIT_FAILED, err
    assert "unsafe path" in err and "backups/b/MANIFEST" in err
    assert snapshot(tmp_path) == before  # nothing written anywhere, inside or out
    assert os.listdir(outside) == [] and not target.exists()


async def test_a_chunk_altered_in_the_store_fails_restore_and_verify_names_it(
    any_store: StoreUnderTest, tmp_path: Path
) -> None:
    await backed_up(any_store, tmp_path)
    document = json.loads(decode(await any_store.read(MANIFEST), where="test"))
    altered = file_entry(document, "big.bin")["chunks"][1]
    key = f"c/chunks/{altered}"
    stored = bytearray(await any_store.read(key))
    stored[1000] ^= 0xFF  # one bit-rotten byte, same size
    await any_store.write(key, bytes(stored))

    target = tmp_path / "target"
    code, err = restore(any_store, target)
    assert code == EXIT_FAILED, err
    assert f"big.bin: chunk chunks/{altered} of big.bin is corrupt" in err
    assert_no_half_file(target, "big.bin")  # not under its name, half or whole, nor a temp file

    verify = cli("verify", any_store.url("c/"), "b", "--deep")
    assert verify.returncode == EXIT_FAILED
    assert f"chunk {altered} is corrupt; it holds part of: big.bin" in verify.stderr
    assert "1 corrupt of 4 chunks" in verify.stderr
    shallow = cli("verify", any_store.url("c/"), "b")  # present, so only --deep can tell
    assert shallow.returncode == EXIT_OK, shallow.stderr


CHUNKS_OF_GROWING = 100


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_file_that_keeps_growing_while_it_is_read(tmp_path: Path, strict: bool) -> None:
    """Stored as last read with a WARNING and exit 3; with --strict, the backup fails."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "steady.txt").write_text("steady\n")
    growing = source / "growing.log"
    growing.write_bytes(os.urandom(CHUNKS_OF_GROWING * SMALL_CHUNK))
    stop = threading.Event()

    def keep_appending() -> None:  # a service writing its log while the backup runs
        with growing.open("ab") as log:
            while not stop.is_set():
                log.write(b"one more line\n")
                log.flush()
                stop.wait(0.001)

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        # 100 chunks at 50 ms per upload, 4 at a time: each read spans over a second, so the
        # writer appends during every read even on a loaded machine that schedules it late.
        result = cli(
            "backup", source, tmp_path / "store", "--name", "b", "--chunk-size", "64K",
            "--concurrency", "4", "--inject-latency", "50", *(["--strict"] if strict else []),
        )  # fmt: skip
    finally:
        stop.set()
        writer.join()
    assert f"{growing} changed while it was being read" in result.stderr
    assert "reading it again (2 of 3)" in result.stderr
    assert "reading it again (3 of 3)" in result.stderr
    if strict:
        assert result.returncode == EXIT_FAILED, result.stderr
        assert "it changed during each of 3 reads" in result.stderr
        assert "nothing was committed" in result.stderr
        assert not (tmp_path / "store" / "backups").exists()
        return
    assert result.returncode == EXIT_WARNINGS, result.stderr
    assert "during each of 3 reads: stored as last read" in result.stderr
    assert "backup b committed with 1 warnings" in result.stderr
    shown = cli("show", tmp_path / "store", "b")
    assert "warnings        1" in shown.stdout
    assert "  changed    growing.log: " in shown.stdout
    restored = cli("restore", tmp_path / "store", "b", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr  # every hash checked on the way
    assert (tmp_path / "restored" / "steady.txt").read_text() == "steady\n"
    assert (tmp_path / "restored" / "growing.log").stat().st_size >= CHUNKS_OF_GROWING * SMALL_CHUNK
