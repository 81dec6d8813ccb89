"""DESIGN section 10 through the library: bad input gets a clear error and loses nothing."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import re
import socket
import stat
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import (
    BackupEngine,
    BackupFailed,
    BackupOptions,
    ConfigError,
    EngineConfig,
    FaultyStorage,
    IntegrityError,
    LocalStorage,
    ManifestError,
    MemoryStorage,
    ObjectNotFoundError,
    RetryPolicy,
    SourceChangedError,
    SourceVanishedError,
    SourceWarning,
    Storage,
)
from asyncbackup.layout import chunk_key
from asyncbackup.manifest_encoding import decode
from asyncbackup.restore import TEMP_MARK
from tests.conftest import SMALL_CHUNK, RecordingSleep, assert_same_tree, fast_config, snapshot
from tests.stores import WatchedStorage

MANIFEST = "backups/{}/MANIFEST"


def engine(
    store: Storage, sleep: RecordingSleep, config: EngineConfig | None = None
) -> BackupEngine:
    return BackupEngine(store, config or fast_config(), sleep=sleep)


def committed(store: MemoryStorage) -> list[str]:
    """The MANIFESTs (and whatever else a failed job might leave under backups/), but not the
    source marks a committed backup writes beside its MANIFEST (``catalog.find_newest``)."""
    return sorted(k for k in store.objects if k.startswith("backups/") and "/SOURCE." not in k)


def names_under(root: Path) -> list[bytes]:
    """Every name below ``root`` (as bytes: the sample tree has names that are not UTF-8)."""
    return [n for _, dirs, files in os.walk(os.fsencode(root)) for n in dirs + files]


def on_first_put(action: Callable[[], None]) -> Callable[[str], Awaitable[None]]:
    """A ``WatchedStorage`` hook that runs ``action`` once, at the backup's first put of a
    chunk (after the walk began: the lock's put comes before it)."""
    pending = [action]

    async def on_put(key: str) -> None:
        while pending and key.startswith("chunks/"):
            pending.pop()()

    return on_put


# A missing or wrong source --------------------------------------------------------------------


async def test_missing_source_is_a_config_error(tmp_path: Path, sleep: RecordingSleep) -> None:
    store = MemoryStorage()
    with pytest.raises(ConfigError, match="does not exist or is not a directory") as caught:
        await engine(store, sleep).backup(tmp_path / "missing", name="b")
    assert str(tmp_path / "missing") in str(caught.value)
    assert store.objects == {}


async def test_source_that_is_a_file_is_a_config_error(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "file.txt"
    source.write_text("not a directory")
    store = MemoryStorage()
    with pytest.raises(ConfigError, match="does not exist or is not a directory") as caught:
        await engine(store, sleep).backup(source, name="b")
    assert str(source) in str(caught.value)
    assert store.objects == {}
    assert source.read_text() == "not a directory"


# Special files and links ----------------------------------------------------------------------


async def test_fifo_and_socket_are_skipped_with_a_warning(
    tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "plain.txt").write_text("kept\n")
    os.mkfifo(source / "fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(source / "sub" / "sock"))  # the socket file outlives the socket
    assert stat.S_ISSOCK(os.lstat(source / "sub" / "sock").st_mode)
    store = MemoryStorage()
    eng = engine(store, sleep)
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        summary = await eng.backup(source, name="b")
    warned = [r for r in caplog.records if r.name == "asyncbackup" and r.levelno >= logging.WARNING]
    skipped = sorted(r.getMessage() for r in warned)
    assert skipped == [
        "skipped fifo: not a regular file, directory or symlink",
        "skipped sub/sock: not a regular file, directory or symlink",
    ]
    assert (summary.files, summary.dirs, summary.skipped) == (1, 1, 2)
    assert [e.path for e in (await eng.manifest("b")).entries] == [".", "plain.txt", "sub"]

    target = tmp_path / "restored"
    await eng.restore("b", target)
    assert sorted(names_under(target)) == [b"plain.txt", b"sub"]
    assert (target / "plain.txt").read_text() == "kept\n"


async def test_device_file_is_skipped(tmp_path: Path, sleep: RecordingSleep) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "plain.txt").write_text("kept\n")
    try:
        os.mknod(source / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this container may not create device files")
    store = MemoryStorage()
    eng = engine(store, sleep)
    summary = await eng.backup(source, name="b")
    assert (summary.files, summary.skipped) == (1, 1)
    assert [e.path for e in (await eng.manifest("b")).entries] == [".", "plain.txt"]


async def test_symlink_loops_and_links_to_dirs_are_stored_as_links(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file.txt").write_text("inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the backup\n")
    os.symlink("b", source / "a")  # a -> b -> a: a loop
    os.symlink("a", source / "b")
    os.symlink("sub", source / "link-to-dir")
    os.symlink(outside, source / "link-outside")
    store = MemoryStorage()
    eng = engine(store, sleep)
    summary = await eng.backup(source, name="b")

    entries = {e.path: e for e in (await eng.manifest("b")).entries}
    assert sorted(entries) == [".", "a", "b", "link-outside", "link-to-dir", "sub", "sub/file.txt"]
    links = {p: (e.type, e.target) for p, e in entries.items() if e.type == "symlink"}
    assert links == {
        "a": ("symlink", "b"),
        "b": ("symlink", "a"),
        "link-to-dir": ("symlink", "sub"),
        "link-outside": ("symlink", str(outside)),
    }
    assert (summary.files, summary.symlinks) == (1, 4)  # nothing behind a link was read

    target = tmp_path / "restored"
    await eng.restore("b", target)
    assert_same_tree(source, target)
    assert os.readlink(target / "a") == "b" and os.readlink(target / "b") == "a"
    assert (target / "link-to-dir").is_symlink()
    assert sorted(os.listdir(outside)) == ["secret.txt"]


# The source changes while it is backed up -----------------------------------------------------


def changing_source(tmp_path: Path) -> Path:
    """``a.bin`` of 4 chunks, read first, and ``z.bin``, read last."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(os.urandom(3 * SMALL_CHUNK + 123))
    (source / "z.bin").write_bytes(b"last file\n")
    return source


# One transfer at a time: the first upload runs while a.bin is still being read.
# One object per chunk (no packs): each chunk's upload is a put these tests can act on.
ONE_AT_A_TIME = EngineConfig(
    concurrency=1, chunk_size=SMALL_CHUNK, retry=RetryPolicy(), pack_threshold=0
)


STRICT = BackupOptions(strict=True)


async def test_a_file_that_vanishes_after_the_walk_is_skipped_with_a_warning(
    tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    source = changing_source(tmp_path)
    store = MemoryStorage()
    watched = WatchedStorage(store, on_put=on_first_put((source / "z.bin").unlink))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        summary = await engine(watched, sleep, ONE_AT_A_TIME).backup(source, name="b")
    message = f"{source / 'z.bin'} vanished before it was read; skipped"
    assert summary.warnings == (SourceWarning("z.bin", "vanished", message),)
    assert message in [r.getMessage() for r in caplog.records]
    assert committed(store) == ["backups/b/MANIFEST"]
    manifest = await engine(store, sleep).manifest("b")
    assert manifest.warnings == summary.warnings and manifest.format_version == 3
    assert [e.path for e in manifest.entries] == [".", "a.bin"]
    await engine(store, sleep).restore("b", tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")  # everything that was still there
    assert sleep.calls == []  # a vanished file is not something a retry can fix


async def test_with_strict_a_file_that_vanishes_after_the_walk_fails_the_backup(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = changing_source(tmp_path)
    store = MemoryStorage()
    watched = WatchedStorage(store, on_put=on_first_put((source / "z.bin").unlink))
    with pytest.raises(BackupFailed) as caught:
        await engine(watched, sleep, ONE_AT_A_TIME).backup(source, name="b", options=STRICT)
    [failure] = caught.value.failures
    assert isinstance(failure.error, SourceVanishedError)
    assert f"{source / 'z.bin'} vanished before it was read" in str(failure.error)
    assert "z.bin" in str(caught.value)
    assert committed(store) == []
    assert sleep.calls == []


async def test_a_file_that_changes_while_read_is_read_again(
    tmp_path: Path, sleep: RecordingSleep, caplog: pytest.LogCaptureFixture
) -> None:
    source = changing_source(tmp_path)

    def append() -> None:  # once, during the first read: a log line being written
        with open(source / "a.bin", "ab") as f:
            f.write(b"appended while the backup reads me")

    store = MemoryStorage()
    watched = WatchedStorage(store, on_put=on_first_put(append))
    with caplog.at_level(logging.WARNING, logger="asyncbackup"):
        await engine(watched, sleep, ONE_AT_A_TIME).backup(source, name="b")
    [warning] = [r.getMessage() for r in caplog.records if "reading it again" in r.getMessage()]
    assert f"{source / 'a.bin'} changed while it was being read" in warning
    assert warning.endswith("; reading it again (2 of 3)")
    await engine(store, sleep).restore("b", tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")  # the bytes as they were after the change


async def test_with_strict_a_file_that_changes_during_every_read_fails_the_backup(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = changing_source(tmp_path)
    size = (source / "a.bin").stat().st_size
    rewrites: list[int] = []

    async def rewrite_a(key: str) -> None:  # every upload: new bytes, same size, a new mtime
        # In place, never truncated: a reader's check racing this write sees the same size;
        # and a new mtime each time, whatever the clock's granularity.
        with open(source / "a.bin", "r+b") as f:
            f.write(os.urandom(size))
        rewrites.append(len(rewrites) + 1)
        os.utime(source / "a.bin", ns=(len(rewrites) * 10**9,) * 2)

    store = MemoryStorage()
    with pytest.raises(BackupFailed) as caught:
        await engine(WatchedStorage(store, on_put=rewrite_a), sleep, ONE_AT_A_TIME).backup(
            source, name="b", options=STRICT
        )
    [failure] = caught.value.failures
    assert isinstance(failure.error, SourceChangedError)
    message = str(failure.error)
    # The rewrite truncates first: a read may catch the file empty or half written.
    assert re.search(
        f"{re.escape(str(source / 'a.bin'))} changed while it was being read "
        rf"\(size {size} -> \d+, read \d+ bytes\)",
        message,
    )
    assert "it changed during each of 3 reads: back it up again once it is quiet" in message
    assert committed(store) == []


async def test_a_file_that_changes_during_every_read_is_stored_as_read_with_a_warning(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = changing_source(tmp_path)
    size = (source / "a.bin").stat().st_size

    async def rewrite_a(key: str) -> None:  # every upload: new bytes, same size, a new mtime
        (source / "a.bin").write_bytes(os.urandom(size))

    store = MemoryStorage()
    summary = await engine(WatchedStorage(store, on_put=rewrite_a), sleep, ONE_AT_A_TIME).backup(
        source, name="b"
    )
    [warning] = summary.warnings
    assert (warning.path, warning.kind) == ("a.bin", "changed")
    assert f"{source / 'a.bin'} changed while it was being read" in warning.message
    assert "during each of 3 reads: stored as last read" in warning.message
    restored = tmp_path / "restored"
    # The restore checks every chunk and the whole file against the recorded hash: what was
    # recorded is exactly what was stored, though the file never held those bytes at one time.
    await engine(store, sleep).restore("b", restored)
    data = (restored / "a.bin").read_bytes()
    assert 0 < len(data) <= size  # a read may catch the rewrite half done: stored as read
    assert (restored / "z.bin").read_bytes() == b"last file\n"
    manifest = await engine(store, sleep).manifest("b")
    assert manifest.warnings == summary.warnings
    [entry] = [e for e in manifest.entries if e.path == "a.bin"]
    assert entry.sha256 == hashlib.sha256(data).hexdigest()


async def test_a_failed_source_file_is_named_in_the_failures(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = changing_source(tmp_path)
    watched = WatchedStorage(MemoryStorage(), on_put=on_first_put((source / "z.bin").unlink))
    with pytest.raises(BackupFailed) as caught:
        await engine(watched, sleep, ONE_AT_A_TIME).backup(source, name="b", options=STRICT)
    assert [f.path for f in caught.value.failures] == ["z.bin"]


# Names and targets ----------------------------------------------------------------------------


async def test_a_backup_name_that_exists_is_refused_and_the_first_kept(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="one")
    first = store.objects[MANIFEST.format("one")]
    other = tmp_path / "other"
    other.mkdir()
    (other / "different.txt").write_text("another tree\n")
    with pytest.raises(ConfigError, match="a backup named 'one' exists already") as caught:
        await eng.backup(other, name="one")
    assert "delete that backup first" in str(caught.value)
    assert store.objects[MANIFEST.format("one")] == first
    assert committed(store) == [MANIFEST.format("one")]
    target = tmp_path / "restored"
    await eng.restore("one", target)
    assert_same_tree(tree, target)


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 201])
async def test_an_invalid_backup_name_is_refused(
    name: str, tree: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    with pytest.raises(ConfigError, match="invalid backup name"):
        await engine(store, sleep).backup(tree, name=name)
    assert store.objects == {}


async def test_restore_into_a_non_empty_dir_is_refused_unless_overwrite(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="b")
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_bytes(b"mine")
    (target / "big.bin").write_bytes(b"an older big.bin")
    before = snapshot(target)
    with pytest.raises(ConfigError, match="is not empty") as caught:
        await eng.restore("b", target)
    assert str(target) in str(caught.value) and "overwrite" in str(caught.value)
    assert snapshot(target) == before

    await eng.restore("b", target, overwrite=True)
    want, got = snapshot(tree), snapshot(target)
    assert {path: got.get(path) for path in want} == want
    assert not [n for n in names_under(target) if TEMP_MARK.encode() in n]


async def test_restore_onto_a_regular_file_is_refused(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="b")
    target = tmp_path / "target"
    target.write_bytes(b"a file, not a directory")
    with pytest.raises(ConfigError, match="exists and is not a directory") as caught:
        await eng.restore("b", target)
    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"a file, not a directory"


async def test_overwrite_never_writes_through_a_link_in_the_target(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="b")
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "sub")  # the backup's sub/ holds files and directories
    before = snapshot(outside)
    with pytest.raises(ManifestError, match="outside") as caught:
        await eng.restore("b", target, overwrite=True)
    assert str(target / "sub") in str(caught.value)
    assert snapshot(outside) == before
    assert os.listdir(outside) == []


async def test_overwrite_never_changes_a_dir_outside_through_a_link(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "src"
    (source / "empty-dir").mkdir(parents=True)  # restored by mkdir, chmod and utime only
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(source, name="b")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    os.utime(outside, ns=(1_000_000_000, 1_000_000_000))
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "empty-dir")
    before = os.stat(outside)
    with pytest.raises(ManifestError, match="outside") as caught:
        await eng.restore("b", target, overwrite=True)
    assert str(target / "empty-dir") in str(caught.value)
    after = os.stat(outside)
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o700, before.st_mtime_ns)


async def test_overwrite_never_creates_dirs_outside_through_a_link(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "src"
    (source / "sub" / "x").mkdir(parents=True)
    (source / "sub" / "x" / "y.txt").write_text("y\n")
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(source, name="b")
    # A MANIFEST that lists the file but not its directories is valid: they are implied.
    edit_manifest(store, "b", lambda doc: doc.update(entries=doc["entries"][-1:]))
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "sub")
    with pytest.raises(ManifestError, match="outside") as caught:
        await eng.restore("b", target, overwrite=True)
    assert str(target / "sub") in str(caught.value)
    assert os.listdir(outside) == []


# Hand-edited, corrupt and unsafe MANIFESTs ----------------------------------------------------


def edit_manifest(store: MemoryStorage, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    key = MANIFEST.format(name)
    document = json.loads(decode(store.objects[key], where="test"))
    edit(document)
    store.objects[key] = json.dumps(document).encode()


async def small_backup(store: MemoryStorage, tmp_path: Path, sleep: RecordingSleep) -> None:
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "f.txt").write_text("payload\n")
    await engine(store, sleep).backup(source, name="b")


def file_entry(document: dict[str, Any]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [e for e in document["entries"] if e["type"] == "file"]
    [entry] = entries
    return entry


@pytest.mark.parametrize("path", ["../outside", "{abs}", "a/../../x", "d/./f", "d//f"])
async def test_a_manifest_naming_a_path_outside_is_refused(
    path: str, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await small_backup(store, tmp_path, sleep)
    path = path.format(abs=tmp_path / "abs-path")  # absolute, and beside the target
    edit_manifest(store, "b", lambda doc: file_entry(doc).update(path=path))
    target = tmp_path / "target"
    before = snapshot(tmp_path)
    with pytest.raises(ManifestError, match="unsafe path") as caught:
        await engine(store, sleep).restore("b", target)
    assert repr(path) in str(caught.value)
    assert "backups/b/MANIFEST" in str(caught.value)
    assert snapshot(tmp_path) == before
    assert not target.exists()


@pytest.mark.parametrize("link_first", [True, False], ids=["link-first", "file-first"])
async def test_a_manifest_with_a_file_beneath_a_link_is_refused(
    link_first: bool, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await small_backup(store, tmp_path, sleep)
    outside = tmp_path / "outside"
    outside.mkdir()

    def edit(doc: dict[str, Any]) -> None:
        link: dict[str, Any] = {"path": "link", "type": "symlink", "mode": 0o777, "mtime_ns": 0}
        link["target"] = str(outside)  # where a write through the link would land
        evil = dict(file_entry(doc), path="link/evil")
        doc["entries"] += [link, evil] if link_first else [evil, link]

    edit_manifest(store, "b", edit)
    target = tmp_path / "target"
    before = snapshot(tmp_path)
    with pytest.raises(ManifestError, match="unsafe path 'link/evil'") as caught:
        await engine(store, sleep).restore("b", target)
    assert "beneath 'link', which is a symlink" in str(caught.value)
    assert snapshot(tmp_path) == before
    assert os.listdir(outside) == []
    assert not target.exists()


async def test_a_manifest_that_is_not_json_is_refused(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await small_backup(store, tmp_path, sleep)
    store.objects[MANIFEST.format("b")] = b'{"format_version": 1, "entr'
    eng = engine(store, sleep)
    with pytest.raises(ManifestError, match="the MANIFEST is not valid JSON") as caught:
        await eng.restore("b", tmp_path / "target")
    assert "backups/b/MANIFEST" in str(caught.value)
    assert not (tmp_path / "target").exists()
    [info] = await eng.list_backups()  # list still shows it, with its problem
    assert info.name == "b" and "not valid JSON" in info.problem


async def test_a_manifest_of_an_unknown_format_version_is_refused(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await small_backup(store, tmp_path, sleep)
    edit_manifest(store, "b", lambda doc: doc.update(format_version=99))
    with pytest.raises(
        ManifestError, match=r"format_version 99 is not one this version reads \(1, 2, 3, 4\)"
    ) as caught:
        await engine(store, sleep).restore("b", tmp_path / "target")
    assert "another version of asyncbackup" in str(caught.value)
    assert not (tmp_path / "target").exists()


async def test_restore_of_an_unknown_backup_is_a_manifest_error(
    tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    await small_backup(store, tmp_path, sleep)
    with pytest.raises(ManifestError, match="no backup named 'nosuch'"):
        await engine(store, sleep).restore("nosuch", tmp_path / "target")
    assert not (tmp_path / "target").exists()


# Damaged chunks -------------------------------------------------------------------------------


def assert_no_half_file(target: Path, path: str) -> None:
    assert not (target / path).exists() and not (target / path).is_symlink()
    assert not [n for n in names_under(target) if TEMP_MARK.encode() in n]


async def test_a_corrupt_chunk_fails_the_restore_and_leaves_no_half_file(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="b")
    [big] = [e for e in (await eng.manifest("b")).entries if e.path == "big.bin"]
    store.objects[chunk_key(big.chunks[1])] = bytes(SMALL_CHUNK)  # same size, other bytes

    target = tmp_path / "target"
    with pytest.raises(BackupFailed) as caught:
        await eng.restore("b", target)
    [failure] = caught.value.failures
    assert failure.path == "big.bin"
    assert isinstance(failure.error, IntegrityError)
    assert f"chunk chunks/{big.chunks[1]} of big.bin is corrupt" in str(failure.error)
    assert_no_half_file(target, "big.bin")
    # A chunk of a large file is streamed: a mismatch may be damage in transit, so it is
    # downloaded once more; the same wrong bytes again are what the store holds: no more tries.
    assert len(sleep.calls) == 1


async def test_a_missing_chunk_fails_the_restore_and_leaves_no_half_file(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    store = MemoryStorage()
    eng = engine(store, sleep)
    await eng.backup(tree, name="b")
    [big] = [e for e in (await eng.manifest("b")).entries if e.path == "big.bin"]
    del store.objects[chunk_key(big.chunks[2])]

    target = tmp_path / "target"
    with pytest.raises(BackupFailed) as caught:
        await eng.restore("b", target)
    [failure] = caught.value.failures
    assert failure.path == "big.bin"
    assert isinstance(failure.error, ObjectNotFoundError)
    assert f"no object chunks/{big.chunks[2]}" in str(failure.error)
    assert_no_half_file(target, "big.bin")
    assert sleep.calls == []  # a missing object is permanent: not retried


async def test_a_corrupt_chunk_on_a_flaky_store_still_fails_cleanly(
    tree: Path, tmp_path: Path, sleep: RecordingSleep
) -> None:
    inner = MemoryStorage()
    await engine(inner, sleep).backup(tree, name="b")
    eng = engine(FaultyStorage(inner, rate=0.3, seed=3), sleep)
    [big] = [e for e in (await eng.manifest("b")).entries if e.path == "big.bin"]
    key = chunk_key(big.chunks[0])
    inner.objects[key] = inner.objects[key][::-1]

    target = tmp_path / "target"
    with pytest.raises(BackupFailed) as caught:
        await eng.restore("b", target)
    assert [(f.path, type(f.error)) for f in caught.value.failures] == [("big.bin", IntegrityError)]
    assert_no_half_file(target, "big.bin")
    assert sleep.calls  # the injected faults were retried; the corrupt chunk was not


async def test_cancelled_local_gets_leak_no_open_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    await store.put("chunks/x", b"chunk bytes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            task = asyncio.create_task(store.get("chunks/x"))
            await asyncio.sleep(0)  # the task hands the open to a worker thread...
            time.sleep(0.01)  # noqa: ASYNC251 - ...which opens the file while the loop is held
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.2)  # the worker threads finish their opens
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
