"""Shared fixtures: sample trees, a strict tree comparison, and a sleep that only records."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import EngineConfig, RetryPolicy

SMALL_CHUNK = 64 * 1024  # the smallest chunk size allowed: makes multi-chunk files cheap


def fast_config(*, concurrency: int = 4, **retry: Any) -> EngineConfig:
    """Small chunks and a retry policy whose sleeps tests replace with ``RecordingSleep``."""
    return EngineConfig(concurrency=concurrency, chunk_size=SMALL_CHUNK, retry=RetryPolicy(**retry))


class RecordingSleep:
    """An injected sleep that returns at once and remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def make_tree(root: Path, *, seed: int = 0) -> Path:
    """A tree with what restores get wrong: several chunks, empty files and dirs, links,
    odd modes and mtimes, unicode, spaces, a newline and non-UTF-8 bytes in names."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(rnd.randbytes(3 * SMALL_CHUNK + 123))  # 4 chunks
    (root / "exact.bin").write_bytes(rnd.randbytes(2 * SMALL_CHUNK))  # exactly 2 chunks
    (root / "dup-a.bin").write_bytes(b"same bytes" * 1000)
    (root / "dup-b.bin").write_bytes(b"same bytes" * 1000)  # stored once
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deeper" / "empty-dir").mkdir(parents=True)
    (root / "sub" / "deeper" / "leaf.txt").write_text("leaf\n")
    (root / "sub" / "name with spaces.txt").write_text("spaces\n")
    (root / "sub" / "naïve ünïcødé ☃.txt").write_text("unicode\n")
    (root / "sub" / "line\nbreak").write_text("newline in the name\n")
    os.mkdir(os.fsencode(root / "sub") + b"/bytes-\xff\xfe")
    with open(os.fsencode(root / "sub") + b"/bytes-\xff\xfe/latin-\xe9.txt", "wb") as f:
        f.write(b"not utf-8 name\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o750)
    (root / "private").write_text("secret\n")
    (root / "private").chmod(0o600)
    os.symlink("sub/deeper/leaf.txt", root / "link-to-leaf")
    os.symlink("/nonexistent/target", root / "dangling-link")
    os.symlink("sub", root / "link-to-dir")
    (root / "readonly-dir").mkdir()
    (root / "readonly-dir" / "inside").write_text("x")
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, ns=(1_600_000_000_000_000_000 + i * 1_000_003,) * 2, follow_symlinks=False)
    (root / "readonly-dir").chmod(0o555)
    return root


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything a restore must reproduce, by relative path (as bytes)."""
    seen: dict[bytes, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, base)
            if stat.S_ISLNK(st.st_mode):
                seen[relative] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                seen[relative] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(path, "rb") as f:
                    content = f.read()
                seen[relative] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return seen


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Bytes, modes, mtimes, link targets, empty files and dirs: all equal."""
    want, got = snapshot(expected), snapshot(actual)
    assert sorted(got) == sorted(want)
    for path, value in want.items():
        assert got[path] == value, path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "source")
