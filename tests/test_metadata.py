"""Hard links, owners and extended attributes, recorded and restored, through the command line
on a local store and on S3 (moto)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, MemoryStorage
from tests.conftest import fast_config
from tests.test_cli import EXIT_OK, cli

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="only root may give files away")


def entries(store: str, name: str) -> dict[str, dict[str, object]]:
    shown = cli("show", store, name, "--json")
    assert shown.returncode == EXIT_OK, shown.stderr
    return {e["path"]: e for e in json.loads(shown.stdout)["entries"]}


def backup_and_restore(source: Path, store: str, target: Path, *options: str) -> None:
    backup = cli("backup", source, store, "--name", "b", *options)
    assert backup.returncode == EXIT_OK, backup.stderr
    restore = cli("restore", store, "b", target)
    assert restore.returncode == EXIT_OK, restore.stderr


def test_hard_links_restore_as_hard_links(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "f").write_bytes(os.urandom(200_000))
    os.link(source / "f", source / "g")
    os.link(source / "f", source / "sub" / "h")
    (source / "alone").write_text("one name\n")
    target = tmp_path / "restored"
    backup_and_restore(source, store_url, target)

    recorded = entries(store_url, "b")
    assert recorded["g"]["hardlink"] == "f" and recorded["sub/h"]["hardlink"] == "f"
    assert "hardlink" not in recorded["f"] and "hardlink" not in recorded["alone"]
    assert recorded["g"]["sha256"] == recorded["f"]["sha256"]  # content recorded as well

    first = (target / "f").stat()
    assert first.st_nlink == 3
    for other in ("g", "sub/h"):
        assert (target / other).stat().st_ino == first.st_ino, other
    assert (target / "f").read_bytes() == (source / "f").read_bytes()
    assert (target / "alone").stat().st_nlink == 1

    # Without its first name, a link restores as a file of its own, from its chunks...
    partial = cli("restore", store_url, "b", tmp_path / "partial", "--include", "sub/h")
    assert partial.returncode == EXIT_OK, partial.stderr
    alone = tmp_path / "partial" / "sub" / "h"
    assert alone.read_bytes() == (source / "f").read_bytes() and alone.stat().st_nlink == 1
    # ...and the names that are restored stay one file.
    two = cli("restore", store_url, "b", tmp_path / "two", "--exclude", "/f")
    assert two.returncode == EXIT_OK, two.stderr
    g, h = (tmp_path / "two" / "g").stat(), (tmp_path / "two" / "sub" / "h").stat()
    assert (g.st_ino, g.st_nlink) == (h.st_ino, 2)
    assert not (tmp_path / "two" / "f").exists()


@ROOT_ONLY
def test_numeric_owners_are_recorded_and_restored_as_root(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file").write_text("owned\n")
    (source / "setuid").write_text("#!/bin/sh\n")
    os.symlink("dir/file", source / "link")
    os.chown(source / "dir" / "file", 1234, 5678)
    os.chown(source / "dir", 4321, 8765)
    os.chown(source / "setuid", 2000, 2000)
    os.chmod(source / "setuid", 0o4755)  # a chown after the chmod would clear the bit
    os.chown(source / "link", 1111, 2222, follow_symlinks=False)
    target = tmp_path / "restored"
    backup_and_restore(source, store_url, target)

    recorded = entries(store_url, "b")
    assert (recorded["dir/file"]["uid"], recorded["dir/file"]["gid"]) == (1234, 5678)
    for path, owner in {
        "dir/file": (1234, 5678), "dir": (4321, 8765), "setuid": (2000, 2000),
        "link": (1111, 2222),
    }.items():  # fmt: skip
        st = os.lstat(target / path)
        assert (st.st_uid, st.st_gid) == owner, path
    assert (target / "setuid").stat().st_mode & 0o7777 == 0o4755


def can_set_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise


def test_xattrs_are_recorded_with_the_flag_and_restored(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "dir" / "file").write_text("tagged\n")
    if not can_set_xattrs(source / "dir" / "file"):
        pytest.skip(f"the file system of {tmp_path} has no user extended attributes")
    os.setxattr(source / "dir" / "file", "user.comment", b"checked \xff by hand")
    os.setxattr(source / "dir", "user.origin", b"camera")
    plain = cli("backup", source, store_url, "--name", "plain")
    assert plain.returncode == EXIT_OK, plain.stderr
    assert "xattrs" not in entries(store_url, "plain")["dir/file"]  # off by default

    target = tmp_path / "restored"
    backup_and_restore(source, store_url, target, "--xattrs")
    assert os.getxattr(target / "dir" / "file", "user.comment") == b"checked \xff by hand"
    assert os.getxattr(target / "dir", "user.origin") == b"camera"
    restored_plain = cli("restore", store_url, "plain", tmp_path / "plain")
    assert restored_plain.returncode == EXIT_OK, restored_plain.stderr
    assert os.listxattr(tmp_path / "plain" / "dir" / "file") == []


class CountingProgress:
    """Counts the bytes the backup reports it read."""

    def __init__(self) -> None:
        self.nbytes = 0

    def advance(self, *, files: int = 0, nbytes: int = 0) -> None:
        self.nbytes += nbytes

    def close(self) -> None:
        pass


async def test_a_file_with_several_names_is_read_once(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(300_000))
    for name in ("b", "c", "d"):
        os.link(source / "a", source / name)
    progress = CountingProgress()
    engine = BackupEngine(MemoryStorage(), fast_config(), progress=progress)
    summary = await engine.backup(source, name="n")
    assert progress.nbytes == 300_000  # not 4 x: the other names are not read again
    assert (summary.files, summary.bytes) == (4, 4 * 300_000)  # yet each name is a file
    manifest = await engine.manifest("n")
    assert [e.hardlink for e in manifest.entries if e.type == "file"] == ["", "a", "a", "a"]
