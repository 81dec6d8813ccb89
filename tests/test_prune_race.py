"""Prune racing a backup, through the command line with real processes, on the local store and
on S3 (moto); then jobs killed with SIGKILL mid-way, and the next job after them.

Each round starts from its own prefix holding backup ``a`` (content A) and a newer ``c``
(content C). The source is put back to A, plus a file of the round: then ``prune --keep-last 1``
and ``backup`` start together (which first alternates), both with ``--inject-latency`` standing
in for a remote store. Prune lets ``a`` go and sweeps its chunks, which the backup reuses: the
interleaving of the issue. Every backup listed afterwards is restored and compared, byte for
byte, with what was backed up. Rounds alternate the default grace period (the local store's
chunks are aged two days, so it sweeps them; on S3 the objects' times are the server's, so
there only the MANIFESTs race) and ``--grace 0s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, open_storage
from tests.conftest import Report, assert_same_tree, fast_config
from tests.test_cli import EXIT_OK, ROOT, cli, list_json

ROUNDS = 30
LATENCY = "20"  # ms on every store operation, both jobs


def content(root: Path, seed: str, files: int = 24) -> Path:
    """A small tree: ``files`` small files and one file of four 64 KiB chunks."""
    if root.exists():
        shutil.rmtree(root)
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:02d}.txt").write_bytes(rnd.randbytes(rnd.randint(100, 3000)))
    (root / "big.bin").write_bytes(rnd.randbytes(4 * 64 * 1024 - 7))
    return root


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fixed(when: datetime) -> Callable[[], datetime]:
    return lambda: when


async def setup_round(url: str, sources: dict[str, Path]) -> None:
    """``a`` then ``c``, a day apart by the backups' own clock (their chunks are new)."""
    now = datetime.now(UTC)
    async with open_storage(url) as store:
        for name, when in (("a", now - timedelta(days=2)), ("c", now - timedelta(days=1))):
            engine = BackupEngine(store, fast_config(), clock=fixed(when))
            await engine.backup(sources[name], name=name)


def age_chunks(store_root: Path) -> None:
    """Make the local store's chunks two days old, as if ``a`` and ``c`` were made then."""
    old = time.time() - 2 * 86400
    for path in (store_root / "chunks").iterdir():
        os.utime(path, (old, old))


async def restore_and_compare(url: str, name: str, source: Path, out: Path) -> bool:
    """Whether backup ``name`` restores to exactly ``source``."""
    async with open_storage(url) as store:
        try:
            await BackupEngine(store, fast_config()).restore(name, out)
            assert_same_tree(source, out)
        except Exception:  # any failure here is a damaged backup: counted
            return False
        return True


@pytest.fixture(params=["local", "s3"])
def base_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[int], str]:
    if request.param == "local":
        return lambda r: str(tmp_path / f"store-{r}")
    bucket: str = request.getfixturevalue("s3_bucket")
    return lambda r: f"s3://{bucket}/round-{r}"


def test_prune_racing_backups_never_damages_a_committed_backup(
    base_url: Callable[[int], str], tmp_path: Path, report: Report
) -> None:
    a = content(tmp_path / "A", "A")
    damaged = committed = waits = swept_rounds = 0
    for r in range(ROUNDS):
        url = base_url(r)
        c = content(tmp_path / "C", f"C{r}")
        asyncio.run(setup_round(url, {"a": a, "c": c}))
        default_grace = r % 2 == 0
        if not url.startswith("s3://") and default_grace:
            age_chunks(Path(url))
        source = content(tmp_path / "source", "A")
        (source / f"round-{r}.txt").write_text(f"new in round {r}\n" * 50)

        grace = [] if default_grace else ["--grace", "0s"]
        prune_args = ("prune", url, "--keep-last", "1", *grace, "--inject-latency", LATENCY)
        backup_args = ("backup", source, url, "--name", "race", "--chunk-size", "64K",
                       "--inject-latency", LATENCY)  # fmt: skip
        first, second = (prune_args, backup_args) if r % 4 < 2 else (backup_args, prune_args)
        jobs = [start(*first), start(*second)]
        outputs = [job.communicate(timeout=120) for job in jobs]
        by_command = {
            args[0]: (job.returncode, out, err)
            for args, job, (out, err) in zip((first, second), jobs, outputs, strict=True)
        }
        for command, (code, _, stderr) in by_command.items():
            assert code == EXIT_OK, f"round {r}: {command} exited {code}: {stderr}"
            waits += "waits for the" in stderr
        swept_rounds += "deleted 0 unused chunks" not in by_command["prune"][2]

        expected = {"a": a, "c": c, "race": source}
        listed = [str(b["name"]) for b in list_json(url)]
        assert "race" in listed and len(listed) <= 2, listed  # keep-last 1, plus race if later
        for name in listed:
            committed += 1
            out = tmp_path / "out" / f"{r}-{name}"
            damaged += not asyncio.run(restore_and_compare(url, name, expected[name], out))
        shutil.rmtree(tmp_path / "out")
    report(
        f"{ROUNDS} rounds (half default grace, half --grace 0s), {committed} committed backups "
        f"restored and compared, {swept_rounds} rounds where prune swept chunks, {waits} waits "
        f"for a lock, damaged: {damaged}"
    )
    assert damaged == 0
    assert waits > 0  # the two did meet


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
    sources = {f"old{i}": content(tmp_path / f"old{i}", f"old{i}", files=60) for i in range(3)}
    sources["keep"] = content(tmp_path / "keep", "keep")
    for name in sources:
        assert cli("backup", sources[name], store_url, "--name", name, "--chunk-size", "64K",
                   "-q").returncode == EXIT_OK  # fmt: skip
    chunks = len(keys_under(store_url, "chunks/"))
    prune = start("prune", store_url, "--keep-last", "1", "--grace", "0s",
                  "--concurrency", "1", "--inject-latency", "30")  # fmt: skip
    wait_until(lambda: len(keys_under(store_url, "chunks/")) < chunks - 5, "prune is sweeping")
    prune.send_signal(signal.SIGKILL)
    prune.communicate()  # reaped: its pid is gone from this host
    keep_chunks = {"chunks/" + r for r in asyncio.run(refs_of(store_url, "keep"))}
    assert set(keys_under(store_url, "chunks/")) - keep_chunks  # killed before it finished
    [lock] = keys_under(store_url, "locks/")

    again = content(tmp_path / "again", "old0", files=60)  # reuses chunks the prune left or not
    backup = cli("backup", again, store_url, "--name", "after", "--chunk-size", "64K")
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
    assert cli("backup", keep, store_url, "--name", "keep", "--chunk-size", "64K").returncode == 0
    kept_chunks = set(keys_under(store_url, "chunks/"))
    big = content(tmp_path / "big", "big", files=300)
    backup = start("backup", big, store_url, "--name", "killed", "--chunk-size", "64K",
                   "--concurrency", "1", "--inject-latency", "30")  # fmt: skip
    wait_until(lambda: len(keys_under(store_url, "chunks/")) > len(kept_chunks) + 5, "uploading")
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
