"""Prune racing a backup, through the command line with real processes, on the local store and
on S3 (moto). (Jobs killed with SIGKILL: ``test_prune_kill.py``.)

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
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, open_storage
from tests.conftest import Report, assert_same_tree, fast_config
from tests.test_cli import EXIT_OK, ROOT

ROUNDS = 30
LATENCY = "10"  # ms on every store operation, both jobs


def content(root: Path, seed: str, files: int = 8) -> Path:
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


async def names(url: str) -> list[str]:
    async with open_storage(url) as store:
        return [b.name for b in await BackupEngine(store).list_backups()]


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
        # The sources differ (A, C, the source): grouped by host, the three are one group.
        prune_args = ("prune", url, "--keep-last", "1", "--group-by", "host", *grace,
                      "--inject-latency", LATENCY)  # fmt: skip
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
        listed = asyncio.run(names(url))
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
