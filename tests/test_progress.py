"""Progress that tells the truth: totals from the MANIFEST for restore and verify --deep, a
percentage, a rate and the time left, MiB everywhere, no bar for commands that move no data;
-v logs each file; backup --json."""

from __future__ import annotations

import io
import json
import logging
from argparse import Namespace
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, LocalStorage
from asyncbackup.cli.run import progress_for
from asyncbackup.progress import BarProgress, LogProgress, NoProgress
from tests.conftest import assert_same_tree, fast_config
from tests.test_cli import EXIT_OK, cli, list_json

MiB = 2**20


class Recorded:
    """A progress that remembers its totals and what it was told."""

    def __init__(self) -> None:
        self.expected: tuple[int, int] | None = None
        self.files = 0
        self.nbytes = 0

    def expect(self, *, files: int = 0, nbytes: int = 0) -> None:
        self.expected = (files, nbytes)

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes


async def test_restore_announces_its_totals_and_reaches_them(tree: Path, tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    await BackupEngine(store, fast_config()).backup(tree, name="b")
    progress = Recorded()
    summary = await BackupEngine(store, fast_config(), progress=progress).restore(
        "b", tmp_path / "out"
    )
    assert_same_tree(tree, tmp_path / "out")
    assert progress.expected == (summary.files, summary.bytes)
    assert (progress.files, progress.nbytes) == progress.expected


async def test_verify_deep_moves_from_zero_to_its_total(tree: Path, tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    backup = await BackupEngine(store, fast_config()).backup(tree, name="b")
    progress = Recorded()
    report = await BackupEngine(store, fast_config(), progress=progress).verify("b", deep=True)
    assert report.ok
    assert progress.expected is not None and progress.expected[1] > 0
    assert progress.nbytes == progress.expected[1]
    assert progress.nbytes <= backup.bytes  # each distinct chunk once


async def test_cat_announces_the_file_size_and_reaches_it(tree: Path, tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    await BackupEngine(store, fast_config()).backup(tree, name="b")
    big = max((p for p in tree.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    progress = Recorded()
    pieces: list[bytes] = []

    async def keep(data: bytes) -> None:
        pieces.append(data)

    engine = BackupEngine(store, fast_config(), progress=progress)
    await engine.restore_file("b", big.relative_to(tree).as_posix(), keep)
    assert b"".join(pieces) == big.read_bytes()
    assert progress.expected == (1, big.stat().st_size)
    assert (progress.files, progress.nbytes) == progress.expected


def test_log_lines_show_percentage_rate_and_time_left() -> None:
    now = [100.0]
    progress = LogProgress("restore", interval=10, clock=lambda: now[0])
    progress.expect(files=40, nbytes=200 * MiB)
    now[0] = 110.0
    progress.advance(files=10, nbytes=50 * MiB)
    assert progress.line(110.0) == (
        "restore: 10/40 files, 50.0 of 200.0 MiB (25%), 5.0 MiB/s, 30s left"
    )
    open_ended = LogProgress("backup", clock=lambda: now[0])
    now[0] = 120.0
    open_ended.advance(files=3, nbytes=30 * MiB)
    assert open_ended.line(120.0) == "backup: 3 files, 30.0 MiB so far (3.0 MiB/s)"  # 10 s in


def test_log_lines_are_emitted_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = LogProgress("verify", interval=10, clock=lambda: now[0])
    progress.expect(nbytes=10 * MiB)
    with caplog.at_level(logging.INFO, logger="asyncbackup"):
        for second in range(1, 31):
            now[0] = float(second)
            progress.advance(nbytes=MiB // 3)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["verify: 0 files"] * 3


def test_the_bar_counts_mib_with_a_percentage_once_totals_are_known() -> None:
    out = io.StringIO()
    bar = BarProgress("restore", file=out)
    bar.expect(files=2, nbytes=4 * MiB)
    bar.advance(files=1, nbytes=MiB)
    bar._bar.refresh()  # tqdm redraws at most ten times a second
    shown = out.getvalue().split("\r")[-1]
    bar.close()
    assert "25%" in shown and "1.0/4.0 MiB" in shown and "files=1/2" in shown


@pytest.mark.parametrize(
    ("command", "extra", "kind"),
    [
        ("backup", {}, LogProgress),
        ("restore", {}, LogProgress),
        ("verify", {"deep": True}, LogProgress),
        ("verify", {"deep": False}, NoProgress),
        ("list", {}, NoProgress),
        ("prune", {}, NoProgress),
        ("show", {}, NoProgress),
        ("delete", {}, NoProgress),
    ],
)
def test_only_commands_that_move_data_show_progress(
    command: str, extra: dict[str, bool], kind: type
) -> None:
    progress = progress_for(Namespace(command=command, **extra), interactive=False)
    assert isinstance(progress, kind)


def test_verbose_logs_each_file_stored_and_restored(tree: Path, tmp_path: Path) -> None:
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    names = [p.relative_to(tree).as_posix() for p in files if p.name.isascii()]
    store = tmp_path / "store"
    quiet = cli("backup", tree, store, "--name", "quiet")
    assert quiet.returncode == EXIT_OK, quiet.stderr
    assert " stored " not in quiet.stderr
    loud = cli("backup", tree, store, "--name", "loud", "-v")
    assert loud.returncode == EXIT_OK, loud.stderr
    assert loud.stderr.count(" DEBUG stored ") == len(files)
    for path in names:
        assert f"DEBUG stored {path} (" in loud.stderr, path
    restore = cli("restore", store, "loud", tmp_path / "out", "-v")
    assert restore.returncode == EXIT_OK, restore.stderr
    assert restore.stderr.count(" DEBUG restored ") == len(files)
    for path in names:
        assert f"DEBUG restored {path} (" in restore.stderr, path
    assert "botocore" not in restore.stderr


def test_backup_json_prints_the_summary(tree: Path, tmp_path: Path) -> None:
    result = cli("backup", tree, tmp_path / "store", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    summary = json.loads(result.stdout)
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert summary["files"] == len(files)
    assert summary["bytes"] == sum(p.stat().st_size for p in files)
    assert summary["warnings"] == []
    assert [b["name"] for b in list_json(tmp_path / "store")] == [summary["name"]]
