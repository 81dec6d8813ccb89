"""Backup excludes through the command line, on a local store and on S3 (moto): gitignore
patterns (--exclude, --exclude-file), --exclude-caches, --exclude-if-present,
--one-file-system, and a local store inside the source left out on its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import EXIT_OK, EXIT_USAGE, cli
from tests.test_live_data import cli_as_job
from tests.test_partial_restore import files_under

CACHEDIR_TAG = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n"


def make(root: Path, files: dict[str, str | bytes]) -> Path:
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        (root / path).write_bytes(data)
    return root


def backed_up_paths(store: str, name: str) -> tuple[list[str], dict[str, object]]:
    shown = cli("show", store, name, "--json")
    assert shown.returncode == EXIT_OK, shown.stderr
    doc = json.loads(shown.stdout)
    paths = [e["path"] for e in doc["entries"]]
    assert "." in paths  # the root itself is always recorded; the tests look below it
    return [p for p in paths if p != "."], doc


def test_exclude_patterns_and_files_have_gitignore_semantics(
    tmp_path: Path, store_url: str
) -> None:
    source = make(
        tmp_path / "src",
        {
            "app.log": "x", "keep.log": "kept by a negation", "sub/deep/trace.log": "x",
            "build/out.o": "x", "src/build/nested.o": "x", "top-only.txt": "x",
            "sub/top-only.txt": "kept: the pattern is anchored", "main.py": "print()",
        },
    )  # fmt: skip
    excludes = tmp_path / "excludes.txt"
    excludes.write_text("# build output\n/build/\n\n!keep.log\n/top-only.txt\n")
    result = cli(
        "backup", source, store_url, "--name", "b", "--exclude", "*.log",
        "--exclude-file", excludes,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    paths, doc = backed_up_paths(store_url, "b")
    assert paths == [
        "keep.log", "main.py", "src", "src/build", "src/build/nested.o", "sub", "sub/deep",
        "sub/top-only.txt",
    ]  # fmt: skip
    assert doc["excludes"] == {
        "patterns": ["*.log", "/build/", "!keep.log", "/top-only.txt"],
        "exclude_caches": False,
        "exclude_if_present": [],
        "one_file_system": False,
        "store": "",
    }
    assert doc["format_version"] == 4  # its small chunks are packed: it has an INDEX
    shown = cli("show", store_url, "b").stdout
    assert "excludes        *.log /build/ !keep.log /top-only.txt" in shown


def test_cache_and_marked_directories_are_left_out(tmp_path: Path, store_url: str) -> None:
    source = make(
        tmp_path / "src",
        {
            "cache/CACHEDIR.TAG": CACHEDIR_TAG, "cache/blob": "x",
            "fake-cache/CACHEDIR.TAG": b"not the signature\n", "fake-cache/blob": "kept",
            "scratch/.nobackup": "", "scratch/tmp": "x",
            "data/file": "kept",
        },
    )  # fmt: skip
    plain = cli("backup", source, store_url, "--name", "plain")
    assert plain.returncode == EXIT_OK, plain.stderr
    assert "cache/blob" in backed_up_paths(store_url, "plain")[0]  # only when asked
    result = cli(
        "backup", source, store_url, "--name", "b", "--exclude-caches",
        "--exclude-if-present", ".nobackup",
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    paths, doc = backed_up_paths(store_url, "b")
    assert paths == [
        "data",
        "data/file",
        "fake-cache",
        "fake-cache/CACHEDIR.TAG",
        "fake-cache/blob",
    ]
    excludes = doc["excludes"]
    assert isinstance(excludes, dict)
    assert (excludes["exclude_caches"], excludes["exclude_if_present"]) == (True, [".nobackup"])


def test_an_excluded_directory_is_never_listed(tmp_path: Path, store_url: str) -> None:
    """An unreadable directory that is excluded costs nothing: no listing, no warning."""
    source = make(tmp_path / "src", {"private/secret": "x", "public/file": "y"})
    (source / "private").chmod(0o000)
    try:
        result = cli_as_job("backup", source, store_url, "--name", "b", "--exclude", "private/")
        assert result.returncode == EXIT_OK, result.stderr
        assert "private" not in result.stderr
    finally:
        (source / "private").chmod(0o755)
    assert backed_up_paths(store_url, "b")[0] == ["public", "public/file"]


def test_a_local_store_inside_the_source_is_left_out_with_a_log_line(tmp_path: Path) -> None:
    source = make(tmp_path / "src", {"a.txt": "a", "sub/b.txt": "b"})
    (source / "backups").mkdir()
    store = source / "backups" / "store"
    # The first backup creates the store, under backups/ (already listed, or not yet: either
    # way it is left out); the second finds it full of the first one's chunks.
    for name in ("one", "two"):
        result = cli("backup", source, store, "--name", name)
        assert result.returncode == EXIT_OK, result.stderr
        paths, doc = backed_up_paths(str(store), name)
        assert paths == ["a.txt", "backups", "sub", "sub/b.txt"]
    assert "excluding backups/store: it is the store this backup writes to" in result.stderr
    assert paths == ["a.txt", "backups", "sub", "sub/b.txt"]
    excludes = doc["excludes"]
    assert isinstance(excludes, dict) and excludes["store"] == "backups/store"
    restored = cli("restore", store, "two", tmp_path / "out")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert files_under(tmp_path / "out") == {
        "a.txt": b"a", "backups": "dir", "sub": "dir", "sub/b.txt": b"b",
    }  # fmt: skip
    itself = cli("backup", source, source, "--name", "x")
    assert itself.returncode == EXIT_USAGE
    assert "is the source directory" in itself.stderr


def test_one_file_system_keeps_a_mount_point_empty(tmp_path: Path) -> None:
    source = make(tmp_path / "src", {"local.txt": "here"})
    mount = source / "mnt"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root in a namespace that allows it): "
                    f"{mounted.stderr.strip()}")  # fmt: skip
    try:
        (mount / "elsewhere.txt").write_text("on another file system")
        store = tmp_path / "store"
        crossing = cli("backup", source, store, "--name", "all")
        one = cli("backup", source, store, "--name", "one", "--one-file-system")
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert crossing.returncode == EXIT_OK, crossing.stderr
    assert one.returncode == EXIT_OK, one.stderr
    assert "mnt/elsewhere.txt" in backed_up_paths(str(store), "all")[0]
    assert backed_up_paths(str(store), "one")[0] == ["local.txt", "mnt"]
    assert "not descending into mnt: another file system" in one.stderr


def test_bad_exclude_options_are_refused_before_anything_is_read(tmp_path: Path) -> None:
    source = make(tmp_path / "src", {"a": "a"})
    store = tmp_path / "store"
    missing = cli("backup", source, store, "--exclude-file", tmp_path / "nope.txt")
    assert missing.returncode == EXIT_USAGE
    assert f"cannot read the exclude file {tmp_path / 'nope.txt'}" in missing.stderr
    invalid = cli("backup", source, store, "--exclude", "!")
    assert invalid.returncode == EXIT_USAGE
    assert "invalid --exclude pattern" in invalid.stderr
    slash = cli("backup", source, store, "--exclude-if-present", "a/b")
    assert slash.returncode == EXIT_USAGE
    assert "--exclude-if-present takes a file name, not 'a/b'" in slash.stderr
    assert not (store / "backups").exists()
