"""Restores that are killed, or run again (issue 13, items 6 to 8): leftovers of killed restores
removed and counted, files already in place kept without a download, --delete, sparse files
restored sparse, and a chunk used many times fetched once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, EngineConfig, MemoryStorage
from asyncbackup.layout import chunk_key
from asyncbackup.restore import TEMP_MARK
from tests.conftest import SMALL_CHUNK, assert_same_tree, fast_config, make_tree, snapshot
from tests.stores import WatchedStorage
from tests.test_cli import EXIT_INTERRUPTED, EXIT_OK, ROOT, cli

MiB = 1024 * 1024


def temporary_names(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, _, files in os.walk(root) for n in files if TEMP_MARK in n]


def gets(store: WatchedStorage, prefix: str = "chunks/") -> int:
    return sum(n for (op, key), n in store.calls.items() if op == "get" and key.startswith(prefix))


def test_leftovers_of_three_killed_restores_are_removed_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for i in range(8):  # files of several chunks: each is assembled under a temporary name
        (source / f"big-{i}.bin").write_bytes(os.urandom(6 * SMALL_CHUNK + i))
    (source / "small.txt").write_text("small\n")
    store = tmp_path / "store"
    backup = cli("backup", source, store, "--name", "b", "--chunk-size", "64K")
    assert backup.returncode == EXIT_OK, backup.stderr
    target = tmp_path / "target"
    left: list[str] = []
    for _ in range(3):
        # 100 ms per store call, 2 at a time: the restore takes seconds; killed mid-way.
        process = subprocess.Popen(
            [sys.executable, "-m", "asyncbackup", "restore", str(store), "b", str(target),
             "--overwrite", "--concurrency", "2", "--inject-latency", "100"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not temporary_names(target):
            assert process.poll() is None, "the restore ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        left = temporary_names(target)
        assert left  # SIGKILL leaves no chance to clean up

    result = cli("restore", store, "b", target, "--overwrite")

    assert result.returncode == EXIT_OK, result.stderr
    assert f"removed {len(left)} temporary files left in {target}" in result.stderr
    assert re.search(
        rf"; {len(left)} temporary files of interrupted restores removed", result.stderr
    )
    assert temporary_names(target) == []
    assert_same_tree(source, target)


def test_an_interrupted_restore_says_what_is_in_the_target_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for i in range(8):
        (source / f"big-{i}.bin").write_bytes(os.urandom(6 * SMALL_CHUNK + i))
    store = tmp_path / "store"
    assert cli("backup", source, store, "--name", "b", "--chunk-size", "64K").returncode == 0
    target = tmp_path / "target"
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", "restore", str(store), "b", str(target),
         "--concurrency", "2", "--inject-latency", "100"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not temporary_names(target):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "nothing was committed" not in stderr
    assert f"interrupted: the files restored until then are in place in {target}" in stderr
    assert "run the same restore again with --overwrite" in stderr
    assert temporary_names(target) == []  # an interrupt, unlike SIGKILL, cleans up


async def test_overwrite_keeps_files_already_in_place_and_fetches_only_the_rest(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "source")
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config()).backup(source, name="b")
    target = tmp_path / "target"
    await BackupEngine(memory, fast_config()).restore("b", target)
    # Same size and mtime, other bytes: only its hash can tell. And one file gone.
    changed = target / "exact.bin"
    st = changed.stat()
    changed.write_bytes(bytes(st.st_size))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    (target / "sub" / "deeper" / "leaf.txt").unlink()
    os.chmod(target / "script.sh", 0o600)  # right bytes, wrong mode: kept, mode set again
    watched = WatchedStorage(memory)

    summary = await BackupEngine(watched, fast_config()).restore("b", target, overwrite=True)

    assert_same_tree(source, target)
    manifest = await BackupEngine(memory).manifest("b")
    by_path = {e.path: e for e in manifest.entries}
    fetched = {key for (op, key) in watched.calls if op == "get" and key.startswith("chunks/")}
    want = {chunk_key(r) for p in ("exact.bin", "sub/deeper/leaf.txt") for r in by_path[p].chunks}
    assert fetched == want  # the two files that were not in place, and nothing else
    assert summary.files_in_place == summary.files - 2
    assert summary.chunks_downloaded == len(want)


async def test_overwrite_keeps_extra_files_and_delete_removes_them(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config()).backup(source, name="b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("not the target's\n")

    def cluttered(target: Path) -> Path:
        target.mkdir()
        (target / "extra.txt").write_text("not in the backup\n")
        (target / "extra-dir" / "inner").mkdir(parents=True)
        (target / "extra-dir" / "inner" / "f").write_text("x")
        os.symlink(outside, target / "extra-link")  # removed as a link, never followed
        (target / "big.bin").mkdir()  # a directory where the backup has a file
        (target / "big.bin" / "x").write_text("x")
        (target / "sub").write_text("a file where the backup has a directory")
        return target

    kept = cluttered(tmp_path / "kept")
    (kept / "big.bin" / "x").unlink()
    (kept / "big.bin").rmdir()  # --overwrite cannot replace a directory by a file
    (kept / "sub").unlink()
    await BackupEngine(memory, fast_config()).restore("b", kept, overwrite=True)
    extras = {b"extra.txt", b"extra-dir", b"extra-dir/inner", b"extra-dir/inner/f", b"extra-link"}
    assert set(snapshot(kept)) - set(snapshot(source)) == extras
    assert {p: v for p, v in snapshot(kept).items() if p not in extras} == snapshot(source)

    mirrored = cluttered(tmp_path / "mirrored")
    summary = await BackupEngine(memory, fast_config()).restore("b", mirrored, delete=True)
    assert_same_tree(source, mirrored)  # exactly the backup: nothing more
    assert summary.deleted == 5  # extra.txt, extra-dir, extra-link, big.bin/, sub
    assert (outside / "precious").read_text() == "not the target's\n"


def bytes_read() -> int | None:
    """What this process has read through read() calls so far (Linux), or None."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return None
    return int(next(line for line in lines if line.startswith("rchar:")).split()[1])


def sparse_file(path: Path, size: int, data_at: list[int]) -> None:
    """A file of ``size`` bytes, holes but for 1 MiB of random bytes at each of ``data_at``."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in data_at:
            f.seek(offset)
            f.write(os.urandom(MiB))


async def test_a_sparse_file_restores_sparse_and_its_zero_chunk_is_never_fetched(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    size = 256 * MiB
    sparse_file(source / "disk.img", size, [0, 100 * MiB, size - MiB])
    if os.stat(source / "disk.img").st_blocks * 512 > 8 * MiB:
        pytest.skip("this file system does not keep holes in files")
    memory = MemoryStorage()
    config = EngineConfig(chunk_size=MiB, concurrency=4)
    read_before = bytes_read()
    await BackupEngine(memory, config).backup(source, name="b")
    if read_before is not None:  # the backup skips the holes (SEEK_DATA): reads 3 MiB, not 256
        assert bytes_read() - read_before < 32 * MiB  # type: ignore[operator]
    watched = WatchedStorage(memory)
    target = tmp_path / "target"

    summary = await BackupEngine(watched, config).restore("b", target)

    restored = target / "disk.img"
    assert restored.stat().st_size == size
    assert restored.stat().st_blocks * 512 <= 4 * MiB  # 3 MiB of data, not 256 MiB
    assert_same_tree(source, target)
    assert gets(watched) == 3  # the three data chunks; the zero chunk is known by its hash
    assert summary.holes == 253 and summary.chunks_downloaded == 3


async def test_a_chunk_used_many_times_is_fetched_once_per_restore(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    block = os.urandom(SMALL_CHUNK)
    (source / "repeated.bin").write_bytes(block * 24)  # one chunk, 24 uses
    for i in range(5):
        (source / f"copy-{i}.bin").write_bytes(block)  # and five more, in other files
    memory = MemoryStorage()
    await BackupEngine(memory, fast_config()).backup(source, name="b")
    watched = WatchedStorage(memory)

    summary = await BackupEngine(watched, fast_config()).restore("b", tmp_path / "target")

    assert_same_tree(source, tmp_path / "target")
    assert gets(watched) == 1 and summary.chunks_downloaded == 1
