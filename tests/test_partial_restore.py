"""Partial restore: ``restore --include/--exclude`` with gitignore patterns, through the command
line on a local store and on S3 (moto)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.test_cli import EXIT_OK, EXIT_USAGE, cli


def files_under(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root``: a file's bytes, a link's target, ``"dir"`` for a directory."""
    found: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = path.read_bytes()
    return found


@pytest.fixture
def backed_up(tmp_path: Path, store_url: str) -> tuple[Path, str]:
    source = tmp_path / "source"
    for path, text in {
        "etc/app.conf": "port = 1\n",
        "etc/db.conf": "host = x\n",
        "etc/passwd": "root\n",
        "var/log/a.log": "a\n",
        "var/log/b.log": "b\n",
        "var/lib/data.db": "data\n" * 10_000,
        "README.md": "# readme\n",
        "docs/README.md": "# docs readme\n",
        "src/schema.sql": "CREATE TABLE t ();\n",
    }.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    (source / "etc").chmod(0o750)
    os.symlink("etc/app.conf", source / "app.conf")
    result = cli("backup", source, store_url, "--name", "b")
    assert result.returncode == EXIT_OK, result.stderr
    return source, store_url


def restore(store: str, target: Path, *patterns: str) -> tuple[int, str, dict[str, bytes | str]]:
    result = cli("restore", store, "b", target, *patterns)
    return result.returncode, result.stderr, files_under(target) if target.exists() else {}


def original(source: Path, *paths: str) -> dict[str, bytes | str]:
    everything = files_under(source)
    return {p: everything[p] for p in paths}


def test_include_restores_the_matches_and_the_directories_above_them(
    backed_up: tuple[Path, str], tmp_path: Path
) -> None:
    source, store = backed_up
    code, err, got = restore(store, tmp_path / "t", "--include", "etc/*.conf")
    assert code == EXIT_OK, err
    assert got == original(source, "etc", "etc/app.conf", "etc/db.conf")
    # the directory above keeps its recorded mode, as in a full restore
    assert stat.S_IMODE((tmp_path / "t" / "etc").stat().st_mode) == 0o750
    # "*.conf" matches at any depth, and the link app.conf too: a link is an entry like any other
    code, err, got = restore(store, tmp_path / "t2", "--include", "*.conf")
    assert code == EXIT_OK, err
    assert got == original(source, "app.conf", "etc", "etc/app.conf", "etc/db.conf")


def test_a_directory_pattern_takes_everything_below_it_and_exclude_trims_it(
    backed_up: tuple[Path, str], tmp_path: Path
) -> None:
    source, store = backed_up
    code, err, got = restore(store, tmp_path / "t", "--include", "var/", "--exclude", "b.log")
    assert code == EXIT_OK, err
    assert got == original(source, "var", "var/log", "var/log/a.log", "var/lib", "var/lib/data.db")


def test_exclude_alone_restores_everything_else(
    backed_up: tuple[Path, str], tmp_path: Path
) -> None:
    source, store = backed_up
    code, err, got = restore(store, tmp_path / "t", "--exclude", "var", "--exclude", "*.md")
    assert code == EXIT_OK, err
    expected = files_under(source)
    for path in list(expected):
        if path.startswith("var") or path.endswith(".md"):
            del expected[path]
    assert got == expected
    assert "docs" in got  # emptied by the exclude, but a directory of the backup all the same


def test_an_anchored_pattern_matches_at_the_top_only(
    backed_up: tuple[Path, str], tmp_path: Path
) -> None:
    source, store = backed_up
    code, err, got = restore(store, tmp_path / "t", "--include", "/README.md")
    assert code == EXIT_OK, err
    assert got == original(source, "README.md")


def test_patterns_that_select_nothing_are_refused_and_write_nothing(
    backed_up: tuple[Path, str], tmp_path: Path
) -> None:
    _, store = backed_up
    code, err, _ = restore(store, tmp_path / "t", "--include", "*.nothing")
    assert code == EXIT_USAGE
    assert "no entry of backup b matches --include ['*.nothing']" in err
    assert "nothing to restore" in err
    assert not (tmp_path / "t").exists()
