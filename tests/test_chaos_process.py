"""Chaos in the process: the CLI killed or interrupted mid-backup, on every kind of store.

SIGKILL gives the job no chance to clean up; running the same command again must finish the
backup, upload only what is missing, and restore identically. SIGINT, and SIGTERM as a service
manager sends it, must stop the job within seconds, exit 130 and commit nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asyncbackup.storage.local import TEMP_PREFIX
from tests.conftest import Report, assert_same_tree
from tests.remote import StoreUnderTest
from tests.test_cli import EXIT_INTERRUPTED, EXIT_OK, ROOT, small_files

FILES = 240  # one chunk each (a few empty), so the chunks stored tell how far the job got
ONE_OBJECT_PER_CHUNK = ("--pack-threshold", "0")
"""These tests count chunk objects to see how far a job got, so packs are off; a job killed
while it stores packs is tested in test_packs.py."""


def start_backup(
    store: StoreUnderTest, source: Path, *extra: str, sigint: signal.Handlers = signal.SIG_DFL
) -> subprocess.Popen[str]:
    """A slow backup (100 ms per store call, 4 at a time: about 6 s) in a subprocess, which
    starts with SIGINT's disposition set to ``sigint`` whatever the test runner's is (a shell
    starts its background jobs with SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", "backup", str(source), store.url("c/"),
         "--name", "nightly", "--concurrency", "4", "--inject-latency", "100",
         *ONE_OBJECT_PER_CHUNK, *extra],
        cwd=ROOT, env=store.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )  # fmt: skip


async def chunks_stored(store: StoreUnderTest) -> list[str]:
    return await store.keys("c/chunks/")  # a local store's listing skips its temporary files


async def wait_for_chunks(store: StoreUnderTest, process: subprocess.Popen[str], n: int) -> None:
    """Wait until the job has stored ``n`` chunks, while it is still running."""
    deadline = time.monotonic() + 30
    while len(await chunks_stored(store)) < n:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the backup never got going"
        await asyncio.sleep(0.05)
    assert process.poll() is None, "the backup finished before it could be stopped"


async def settled_chunks(store: StoreUnderTest) -> list[str]:
    """The chunks stored once the server has finished what the dead client sent it."""
    before = await chunks_stored(store)
    while True:
        await asyncio.sleep(0.3)
        now = await chunks_stored(store)
        if now == before:
            return now
        before = now


def summary_counts(stderr: str) -> tuple[int, int]:
    """(chunks uploaded, chunks already stored) from the backup's summary line."""
    found = re.search(r"(\d+) chunks uploaded \([^)]*\), (\d+) already stored", stderr)
    assert found, stderr
    return int(found.group(1)), int(found.group(2))


async def run_cli(store: StoreUnderTest, *args: str | Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncbackup", *map(str, args),
        cwd=ROOT, env=store.cli_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_sigkill_mid_backup_then_the_same_command_finishes_it(
    any_store: StoreUnderTest, tmp_path: Path, report: Report
) -> None:
    source = small_files(tmp_path / "source", FILES)
    unique = sum(1 for p in source.rglob("*.txt") if p.stat().st_size)
    process = start_backup(any_store, source)
    try:
        await wait_for_chunks(any_store, process, 20)
    finally:
        process.kill()  # SIGKILL: no handler runs, nothing is cleaned up
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    left_behind = len(await settled_chunks(any_store))
    assert 20 <= left_behind < unique
    assert await any_store.keys("c/backups/") == []  # killed before its commit

    code, out, err = await run_cli(
        any_store,
        "backup",
        source,
        any_store.url("c/"),
        "--name",
        "nightly",
        *ONE_OBJECT_PER_CHUNK,
    )
    assert code == EXIT_OK, err
    assert out.strip() == "nightly"
    assert summary_counts(err) == (unique - left_behind, left_behind)  # only what was missing
    assert len(await chunks_stored(any_store)) == unique

    code, _, err = await run_cli(
        any_store, "restore", any_store.url("c/"), "nightly", tmp_path / "restored"
    )
    assert code == EXIT_OK, err
    assert_same_tree(source, tmp_path / "restored")
    report(
        f"killed with {left_behind} of {unique} chunks stored; the rerun uploaded "
        f"{unique - left_behind} and reused {left_behind}; restore identical"
    )


@pytest.mark.parametrize(
    ("stop", "sigint"),
    [
        (signal.SIGINT, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGTERM, signal.SIG_IGN),  # started as a shell's background job: still stops
    ],
    ids=["SIGINT", "SIGTERM", "SIGTERM-background"],
)
async def test_sigint_mid_backup_exits_130_within_seconds_and_commits_nothing(
    any_store: StoreUnderTest,
    tmp_path: Path,
    report: Report,
    stop: signal.Signals,
    sigint: signal.Handlers,
) -> None:
    source = small_files(tmp_path / "source", FILES)
    unique = sum(1 for p in source.rglob("*.txt") if p.stat().st_size)
    process = start_backup(any_store, source, sigint=sigint)
    try:
        await wait_for_chunks(any_store, process, 10)
        signalled = time.monotonic()
        process.send_signal(stop)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
        stopped_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "interrupted: nothing was committed" in err
    assert out == ""
    assert stopped_after < 5  # "within seconds": a hang guard, far above the ~0.1 s it takes
    assert await any_store.keys("c/backups/") == []
    assert 10 <= len(await chunks_stored(any_store)) < unique
    if any_store.kind == "local":  # objects elsewhere appear whole or not at all
        files = [name for _, _, names in os.walk(any_store.bucket) for name in names]
        assert len(files) >= 10
        assert not [name for name in files if name.startswith(TEMP_PREFIX)]
    report(f"exit 130 {stopped_after:.2f} s after {stop.name}, no MANIFEST")
