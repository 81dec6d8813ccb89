"""Messages that used to mislead (issue 13, item 9): each names the path and says what to do
about that particular failure.

The tests run as root here, where a mode cannot deny a read, so a denied permission and a full
disk come from the one call that meets them (``os.scandir``, ``os.open``, ``os.pwrite``),
replaced for the test through ``monkeypatch``; everything else is the real code on a real disk.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import BackupEngine, BackupFailed, MemoryStorage, SourceAccessError, TargetError
from asyncbackup.backup_options import BackupOptions
from asyncbackup.restore import TEMP_MARK
from tests.conftest import SMALL_CHUNK, fast_config, make_tree
from tests.test_cli import EXIT_FAILED, cli


def failing(real: Callable[..., Any], when: Callable[..., bool], code: int) -> Callable[..., Any]:
    """``real``, except that it raises OSError ``code`` for the calls ``when`` picks."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return call


def test_a_failed_restore_says_what_is_in_the_target_not_that_nothing_was_committed(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "source")
    store = tmp_path / "store"
    # One object per chunk (packs off): the test damages one chunk object.
    backup = cli(
        "backup", source, store, "--name", "b", "--chunk-size", "64K", "--pack-threshold", "0"
    )
    assert backup.returncode == 0
    [chunk] = [p for p in (store / "chunks").iterdir() if p.stat().st_size == SMALL_CHUNK][:1]
    chunk.write_bytes(bytes(SMALL_CHUNK))  # corrupt: same size, other bytes
    target = tmp_path / "target"

    result = cli("restore", store, "b", target)

    assert result.returncode == EXIT_FAILED
    assert "nothing was committed" not in result.stderr
    assert f"restore failed, the files restored until then are in place in {target}" in (
        result.stderr
    )
    assert "nothing is half-written" in result.stderr
    assert "run the same restore again with --overwrite" in result.stderr


async def test_a_full_disk_names_the_file_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(4 * SMALL_CHUNK))
    store = MemoryStorage()
    await BackupEngine(store, fast_config()).backup(source, name="b")
    monkeypatch.setattr(os, "pwrite", failing(os.pwrite, lambda *a: True, errno.ENOSPC))
    target = tmp_path / "target"

    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(store, fast_config()).restore("b", target)

    failures = caught.value.failures
    assert all(isinstance(f.error, TargetError) for f in failures)
    assert {str(f.error) for f in failures} == {
        f"cannot write {target / 'big.bin'}: no space left on the device: free some space or "
        "restore elsewhere, then run the restore again with --overwrite (files already in "
        "place are kept)"
    }
    assert "None" not in str(caught.value)
    assert not [n for n in os.listdir(target) if TEMP_MARK in n]  # its temporary file went


async def test_a_directory_the_backup_may_not_list_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    (source / "locked").mkdir(parents=True)
    (source / "locked" / "f").write_text("f")
    locked = os.stat(source / "locked")

    def is_locked(target: Any) -> bool:
        st = os.fstat(target) if isinstance(target, int) else os.stat(target)
        return (st.st_dev, st.st_ino) == (locked.st_dev, locked.st_ino)

    monkeypatch.setattr(os, "scandir", failing(os.scandir, is_locked, errno.EACCES))
    store = MemoryStorage()
    strict = BackupOptions(strict=True)  # without it, it is recorded empty with this warning

    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(store, fast_config()).backup(source, name="b", options=strict)

    message = str(caught.value)
    assert message.startswith(
        f"backup failed, nothing was committed: cannot list directory {source / 'locked'}: "
        "Permission denied: give the user running the backup read and search permission on it"
    )  # no empty label before the message
    assert "Run the same command again" not in message  # a rerun would meet the same refusal
    assert isinstance(caught.value.failures[0].error, SourceAccessError)
    assert not [k for k in store.objects if k.startswith("backups/")]


async def test_a_file_the_backup_may_not_read_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "secret.key").write_text("k")
    (source / "open.txt").write_text("o")
    monkeypatch.setattr(
        os, "open", failing(os.open, lambda name, *a, **k: name == "secret.key", errno.EACCES)
    )

    strict = BackupOptions(strict=True)  # without it, the file is skipped with this warning
    with pytest.raises(BackupFailed) as caught:
        await BackupEngine(MemoryStorage(), fast_config()).backup(source, name="b", options=strict)

    [failure] = caught.value.failures
    assert failure.path == "secret.key"
    assert str(failure.error) == (
        f"cannot read {source / 'secret.key'}: Permission denied: give the user running the "
        "backup read permission on it, or run the backup as a user who has it"
    )
    assert "Run the same command again" not in str(caught.value)
