"""``asyncbackup diff STORE A B``: added, removed and changed entries, as text and as JSON,
through the command line on a local store and on S3 (moto)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.test_cli import EXIT_FAILED, EXIT_OK, cli


def two_backups(tmp_path: Path, store: str) -> None:
    """Backup ``a`` of a small tree, then ``b`` after one change of every kind."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "same.txt").write_text("unchanged\n")
    (source / "edited.txt").write_text("first\n")
    (source / "rewritten.txt").write_text("abc\n")
    (source / "gone.txt").write_text("soon removed\n")
    (source / "script.sh").write_text("#!/bin/sh\n")
    (source / "script.sh").chmod(0o644)
    (source / "becomes-dir").write_text("a file, then a directory\n")
    os.symlink("same.txt", source / "link")
    assert cli("backup", source, store, "--name", "a").returncode == EXIT_OK
    (source / "edited.txt").write_text("first, and a second line\n")
    (source / "rewritten.txt").write_text("xyz\n")  # same size, other content
    (source / "gone.txt").unlink()
    (source / "script.sh").chmod(0o755)
    (source / "becomes-dir").unlink()
    (source / "becomes-dir").mkdir()
    (source / "docs").mkdir()
    (source / "docs" / "new.md").write_text("# new\n")
    (source / "link").unlink()
    os.symlink("edited.txt", source / "link")
    assert cli("backup", source, store, "--name", "b").returncode == EXIT_OK


def test_diff_names_every_added_removed_and_changed_entry(tmp_path: Path, store_url: str) -> None:
    store = store_url
    two_backups(tmp_path, store)
    result = cli("diff", store, "a", "b")
    assert result.returncode == EXIT_OK, result.stderr
    sha = {
        name: hashlib.sha256(text.encode()).hexdigest()[:12]
        for name, text in {
            "first": "first\n",
            "second": "first, and a second line\n",
            "abc": "abc\n",
            "xyz": "xyz\n",
        }.items()
    }
    assert result.stdout.splitlines() == [
        "M becomes-dir/  (type file -> dir)",
        "+ docs/",
        "+ docs/new.md",
        f"M edited.txt  (size 6 -> 25, content {sha['first']} -> {sha['second']})",
        "- gone.txt",
        "M link  (target same.txt -> edited.txt)",
        f"M rewritten.txt  (content {sha['abc']} -> {sha['xyz']})",
        "M script.sh  (mode 0644 -> 0755)",
    ]
    assert "a -> b: 2 added, 1 removed, 5 changed" in result.stderr
    backwards = cli("diff", store, "b", "a")
    assert backwards.returncode == EXIT_OK, backwards.stderr
    assert "b -> a: 1 added, 2 removed, 5 changed" in backwards.stderr
    same = cli("diff", store, "a", "a")
    assert (same.returncode, same.stdout) == (EXIT_OK, "")
    assert "a -> a: 0 added, 0 removed, 0 changed" in same.stderr


def test_diff_json_gives_both_sides_of_each_change(tmp_path: Path, store_url: str) -> None:
    store = store_url
    two_backups(tmp_path, store)
    result = cli("diff", store, "a", "b", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["old"], doc["new"]) == ("a", "b")
    assert (doc["added"], doc["removed"], doc["changed"]) == (2, 1, 5)
    by_path = {c["path"]: c for c in doc["changes"]}
    assert by_path["gone.txt"]["status"] == "removed" and by_path["gone.txt"]["after"] is None
    assert by_path["gone.txt"]["before"]["size"] == len("soon removed\n")
    assert by_path["docs/new.md"]["status"] == "added" and by_path["docs/new.md"]["before"] is None
    edited = by_path["edited.txt"]
    assert edited["fields"] == ["size", "content"]
    assert (edited["before"]["size"], edited["after"]["size"]) == (6, 25)
    assert by_path["script.sh"]["fields"] == ["mode"]
    assert (by_path["script.sh"]["before"]["mode"], by_path["script.sh"]["after"]["mode"]) == (
        0o644,
        0o755,
    )
    assert by_path["becomes-dir"]["fields"] == ["type"]
    assert by_path["link"]["after"]["target"] == "edited.txt"
    assert "same.txt" not in by_path


def test_diff_against_a_missing_backup_fails_with_its_name(tmp_path: Path) -> None:
    store = tmp_path / "store"
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_text("x")
    assert cli("backup", source, store, "--name", "a").returncode == EXIT_OK
    result = cli("diff", store, "a", "nope")
    assert result.returncode == EXIT_FAILED
    assert "no backup named 'nope'" in result.stderr
    assert result.stdout == ""
