"""Backup from standard input or a command's output, and ``cat``: through the command line on a
local store and on S3 (moto), and through the library API on the memory store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, BackupFailed, ConfigError, IntegrityError, MemoryStorage
from asyncbackup.layout import chunk_key
from tests.conftest import SMALL_CHUNK, RecordingSleep, fast_config
from tests.stores import WatchedStorage
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ROOT, cli


def cli_bytes(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The CLI with ``stdin`` piped in and its stdout kept as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "asyncbackup", *map(str, args)],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def listed(store: str) -> list[str]:
    result = cli("list", store, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    return [b["name"] for b in json.loads(result.stdout)]


def test_stdin_is_stored_as_one_file_and_cat_writes_it_back(store_url: str) -> None:
    data = os.urandom(5 * SMALL_CHUNK + 77)  # 6 chunks
    backup = cli_bytes(
        "backup", "-", store_url, "--stdin-name", "db.sql", "--name", "dump", "--chunk-size",
        "64K", stdin=data,
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr
    assert backup.stdout == b"dump\n"
    shown = json.loads(cli("show", store_url, "dump", "--json").stdout)
    assert shown["source"] == "stdin"
    [entry] = shown["entries"]
    assert (entry["path"], entry["type"], entry["mode"]) == ("db.sql", "file", 0o600)
    assert (entry["size"], len(entry["chunks"])) == (len(data), 6)
    cat = cli_bytes("cat", store_url, "dump", "db.sql")
    assert cat.returncode == EXIT_OK, cat.stderr
    assert cat.stdout == data


def test_stdin_chunks_are_uploaded_while_the_input_is_still_being_written(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    first = os.urandom(4 * SMALL_CHUNK)
    producer = subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", "backup", "-", store, "--name", "s",
         "--chunk-size", "64K", "--stdin-name", "big.bin", "--pack-threshold", "0"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdin is not None
    producer.stdin.write(first)
    producer.stdin.flush()
    # The input is still open: the first chunks must reach the store before it ends.
    wanted = store / chunk_key(hashlib.sha256(first[:SMALL_CHUNK]).hexdigest())
    deadline = time.monotonic() + 30
    while not wanted.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    uploaded_early = wanted.exists()
    rest = os.urandom(SMALL_CHUNK // 2)
    _, err = producer.communicate(rest, timeout=60)
    assert producer.returncode == EXIT_OK, err
    assert uploaded_early, "no chunk was stored while standard input was still open"
    assert cli_bytes("cat", store, "s", "big.bin").stdout == first + rest


def test_a_command_that_fails_fails_the_backup_and_commits_nothing(store_url: str) -> None:
    command = "sh -c 'head -c 200000 /dev/urandom; echo dump failed >&2; exit 3'"
    backup = cli("backup", "-", store_url, "--stdin-from-command", command, "--name", "d")
    assert backup.returncode == EXIT_FAILED, backup.stderr
    assert "dump failed" in backup.stderr  # the command's own stderr passes through
    assert f"the command {command!r} exited with status 3" in backup.stderr
    assert "nothing was committed" in backup.stderr
    assert listed(store_url) == []


def test_a_command_that_succeeds_is_stored(store_url: str) -> None:
    command = "printf 'CREATE TABLE t (id int);\\n'"
    backup = cli(
        "backup", "-", store_url, "--stdin-from-command", command, "--stdin-name", "app.sql",
        "--name", "d",
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr
    assert cli_bytes("cat", store_url, "d", "app.sql").stdout == b"CREATE TABLE t (id int);\n"
    shown = json.loads(cli("show", store_url, "d", "--json").stdout)
    assert shown["source"] == f"command: {command}"


def test_a_command_killed_by_a_signal_fails_the_backup(tmp_path: Path) -> None:
    store = tmp_path / "store"
    command = "sh -c 'echo half a dump; kill -9 $$'"
    backup = cli("backup", "-", store, "--stdin-from-command", command, "--name", "d")
    assert backup.returncode == EXIT_FAILED, backup.stderr
    assert f"the command {command!r} was killed by signal 9" in backup.stderr
    assert not (store / "backups").exists()


def test_a_terminal_on_standard_input_is_refused(tmp_path: Path) -> None:
    """``backup -`` typed at a terminal, with nothing piped in: said, not waited on."""
    controller, terminal = os.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "asyncbackup", "backup", "-", str(tmp_path / "store")],
            cwd=ROOT, stdin=terminal, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "standard input is a terminal: pipe the data in" in result.stderr


def test_bad_stream_usage_is_refused_with_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "store"
    missing = cli("backup", "-", store, "--stdin-from-command", "no-such-command-xyz")
    assert missing.returncode == EXIT_USAGE
    assert "cannot run 'no-such-command-xyz'" in missing.stderr
    (tmp_path / "src").mkdir()
    misplaced = cli("backup", tmp_path / "src", store, "--stdin-name", "x")
    assert misplaced.returncode == EXIT_USAGE
    assert "--stdin-name and --stdin-from-command need SOURCE '-'" in misplaced.stderr
    slash = cli_bytes("backup", "-", store, "--stdin-name", "a/b", stdin=b"x")
    assert slash.returncode == EXIT_USAGE
    assert b"stream file name 'a/b' must be a plain name" in slash.stderr
    assert not (store / "backups").exists()


def test_cat_refuses_what_is_not_one_file(tmp_path: Path) -> None:
    source, store = tmp_path / "src", tmp_path / "store"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "f").write_text("x")
    assert cli("backup", source, store, "--name", "b").returncode == EXIT_OK
    missing = cli_bytes("cat", store, "b", "dir/nope")
    assert missing.returncode == EXIT_FAILED
    assert b"backup b has no file 'dir/nope'" in missing.stderr and missing.stdout == b""
    directory = cli_bytes("cat", store, "b", "dir")
    assert directory.returncode == EXIT_USAGE
    assert b"'dir' in backup b is a dir, not a file" in directory.stderr


def test_cat_checks_each_chunk_before_it_writes_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    data = os.urandom(4 * SMALL_CHUNK)
    backup = cli_bytes(
        "backup", "-", store, "--name", "s", "--chunk-size", "64K", "--stdin-name", "f",
        "--pack-threshold", "0", stdin=data,
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr
    third = data[2 * SMALL_CHUNK : 3 * SMALL_CHUNK]
    damaged = store / chunk_key(hashlib.sha256(third).hexdigest())
    damaged.write_bytes(b"X" + third[1:])
    cat = cli_bytes("cat", store, "s", "f", "--concurrency", "1")
    assert cat.returncode == EXIT_FAILED
    assert b"is corrupt" in cat.stderr
    assert cat.stdout == data[: 2 * SMALL_CHUNK]  # the good chunks before it, and not one byte more


# The library API: a backup from an async iterator of bytes, a restore of one file to a writer.


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


@pytest.mark.parametrize("piece", [1000, SMALL_CHUNK, 3 * SMALL_CHUNK + 5])
async def test_backup_stream_and_restore_file_round_trip(sleep: RecordingSleep, piece: int) -> None:
    data = os.urandom(7 * SMALL_CHUNK + 3)
    engine = BackupEngine(MemoryStorage(), fast_config(), sleep=sleep)
    summary = await engine.backup_stream(pieces(data, piece), filename="data.bin", name="s")
    assert (summary.files, summary.bytes, summary.chunks_uploaded) == (1, len(data), 8)
    received: list[bytes] = []

    async def write(chunk: bytes) -> None:
        received.append(chunk)

    assert await engine.restore_file("s", "data.bin", write) == len(data)
    assert b"".join(received) == data
    with pytest.raises(ConfigError, match="must be a plain name"):
        await engine.backup_stream(pieces(b"x", 1), filename="../x", name="t")


async def test_an_iterator_that_raises_commits_nothing(sleep: RecordingSleep) -> None:
    store = MemoryStorage()

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(3 * SMALL_CHUNK)
        raise IntegrityError("the producer found its own data bad")

    with pytest.raises(BackupFailed, match="the producer found its own data bad"):
        await BackupEngine(store, fast_config(), sleep=sleep).backup_stream(
            broken(), filename="f", name="s"
        )
    assert not any(k.startswith("backups/") for k in store.objects)


async def test_a_stream_is_read_no_further_ahead_than_the_chunks_it_may_hold(
    sleep: RecordingSleep,
) -> None:
    """Memory stays bounded as for a file: with the store stalled, the producer is not drained."""
    release = asyncio.Event()

    async def stall(key: str) -> None:
        await release.wait()

    config = fast_config(concurrency=2)  # holds 2 * 2 = 4 chunks
    engine = BackupEngine(WatchedStorage(MemoryStorage(), on_put=stall), config, sleep=sleep)
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(100):
            produced += SMALL_CHUNK
            yield os.urandom(SMALL_CHUNK)

    task = asyncio.create_task(engine.backup_stream(endless(), filename="f", name="s"))
    for _ in range(200):
        await asyncio.sleep(0.005)
    held = produced // SMALL_CHUNK
    release.set()
    summary = await task
    # 4 chunks waiting for the store, one being hashed and one read: never the whole stream.
    assert held <= config.buffered_chunks + 2, held
    assert summary.bytes == 100 * SMALL_CHUNK
