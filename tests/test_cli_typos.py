"""Typos never become data: mistyped URLs, paths that hold no store, `-` as a target, invalid
bucket names; and names that two jobs started at once never share."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from asyncbackup.backup import default_name
from asyncbackup.errors import BackupError, ConfigError, NameTakenError
from asyncbackup.storage.local import MARKER
from tests.conftest import assert_same_tree, make_tree
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ROOT, list_json


def run_in(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``asyncbackup ARGS`` run from ``cwd``, where a mistyped URL would become a directory."""
    return subprocess.run(
        [sys.executable, "-m", "asyncbackup", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("s3:/my-backups/x", "s3://my-backups/x"),
        ("s3//my-backups/x", "s3://my-backups/x"),
        ("gs:/my-backups", "gs://my-backups"),
        ("S3:my-backups", "s3://my-backups"),
        ("file:/srv/backups", "file:///srv/backups"),
    ],
)
def test_a_mistyped_store_url_is_refused_with_the_url_we_think_was_meant(
    typed: str, meant: str, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source")
    work = tmp_path / "work"
    work.mkdir()
    result = run_in(work, "backup", source, typed)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"did you mean {meant}?" in result.stderr
    assert result.stdout == ""
    assert list(work.iterdir()) == []  # no ./s3:/... directory made


def test_a_directory_that_looks_like_a_url_can_still_be_named(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    result = run_in(tmp_path, "backup", source, "./s3:", "--name", "b")
    assert result.returncode == EXIT_OK, result.stderr
    assert (tmp_path / "s3:" / "backups" / "b" / "MANIFEST").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "{path}"],
        ["show", "{path}", "b"],
        ["verify", "{path}", "b"],
        ["restore", "{path}", "b", "{tmp}/out"],
        ["delete", "{path}", "b"],
        ["prune", "{path}", "--keep-last", "1"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_path_with_no_store_says_so_and_exits_1(argv: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "not-a-store"
    empty.mkdir()
    (empty / "unrelated.txt").write_text("mine")
    for path in (empty, tmp_path / "absent"):
        args = [a.format(path=path, tmp=tmp_path) for a in argv]
        result = run_in(tmp_path, *args)
        assert result.returncode == EXIT_FAILED, result.stderr
        assert f"no store at {path}" in result.stderr
        assert not (tmp_path / "absent").exists()
        assert sorted(p.name for p in empty.iterdir()) == ["unrelated.txt"]
        assert not (tmp_path / "out").exists()


def test_a_store_emptied_by_delete_is_still_a_store_and_old_stores_work(tmp_path: Path) -> None:
    source, store = make_tree(tmp_path / "source"), tmp_path / "store"
    assert run_in(tmp_path, "backup", source, store, "--name", "b").returncode == EXIT_OK
    assert (store / MARKER).exists()
    (store / MARKER).unlink()  # a store made before the marker existed
    assert [b["name"] for b in list_json(store)] == ["b"]
    assert run_in(tmp_path, "delete", store, "b").returncode == EXIT_OK
    assert run_in(tmp_path, "backup", source, store, "--name", "c").returncode == EXIT_OK
    assert run_in(tmp_path, "delete", store, "c").returncode == EXIT_OK
    listed = run_in(tmp_path, "list", store)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert f"no backups in {store}" in listed.stderr


def test_restore_to_standard_output_is_refused(tmp_path: Path) -> None:
    source, store = make_tree(tmp_path / "source"), tmp_path / "store"
    assert run_in(tmp_path, "backup", source, store, "--name", "b").returncode == EXIT_OK
    result = run_in(tmp_path, "restore", store, "b", "-")
    assert result.returncode == EXIT_USAGE
    assert "restore writes a directory tree, not standard output" in result.stderr
    assert "'asyncbackup cat STORE NAME PATH' writes one file" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "-").exists()
    named = run_in(tmp_path, "restore", store, "b", "./-")  # a directory named '-' is fine
    assert named.returncode == EXIT_OK, named.stderr
    assert_same_tree(source, tmp_path / "-")


@pytest.mark.parametrize(
    "url",
    ["s3://My_Backups/x", "s3://ab", "s3://192.168.1.10/x", "gs://-backups", "gs://a..b/x"],
)
def test_an_invalid_bucket_name_is_reported_as_invalid(url: str, tmp_path: Path) -> None:
    result = run_in(tmp_path, "list", url)
    assert result.returncode == EXIT_USAGE, result.stderr
    bucket = url.split("/")[2]
    assert f"{bucket!r} is not a valid bucket name" in result.stderr
    assert "does not exist" not in result.stderr


def test_default_names_are_unique_sortable_and_valid() -> None:
    names = [default_name() for _ in range(50)]  # most of them in one millisecond
    assert len(set(names)) == len(names)  # fails once in 10,000 runs, by the birthday bound
    for name in names:
        assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}", name), name
    assert sorted(names, key=lambda n: n[:19]) == names  # in time order


def test_two_backups_started_at_once_both_commit(tmp_path: Path) -> None:
    source, store = make_tree(tmp_path / "source"), tmp_path / "store"
    command = [sys.executable, "-m", "asyncbackup", "backup", str(source), str(store)]
    jobs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    names = [job.communicate(timeout=60)[0].strip() for job in jobs]
    assert [job.returncode for job in jobs] == [EXIT_OK, EXIT_OK]
    assert names[0] != names[1]
    assert sorted(str(b["name"]) for b in list_json(store)) == sorted(names)


def test_losing_a_race_for_a_name_is_exit_1_and_the_winner_stands(tmp_path: Path) -> None:
    """A slow job checks the name is free, a fast one takes it, the slow one loses at commit.

    The slow job has about 15 store calls at 0.5 s each, one at a time: seconds longer than
    the fast job takes, even on a loaded machine."""
    source, store = make_tree(tmp_path / "source"), tmp_path / "store"
    slow = subprocess.Popen(
        [sys.executable, "-m", "asyncbackup", "backup", str(source), str(store),
         "--name", "nightly", "--inject-latency", "500", "--concurrency", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert slow.stderr is not None
    seen = []
    for line in slow.stderr:  # the name was free when the slow job looked
        seen.append(line)
        if "already in the store" in line:
            break
    fast = run_in(tmp_path, "backup", source, store, "--name", "nightly")
    assert fast.returncode == EXIT_OK, fast.stderr
    rest = slow.communicate(timeout=120)[1]
    assert slow.returncode == EXIT_FAILED, "".join(seen) + rest
    assert "another job committed a backup named 'nightly' while this one ran" in rest
    assert [b["name"] for b in list_json(store)] == ["nightly"]
    restored = run_in(tmp_path, "restore", store, "nightly", tmp_path / "out")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(source, tmp_path / "out")


def test_a_lost_race_is_not_a_usage_error() -> None:
    assert issubclass(NameTakenError, BackupError)
    assert not issubclass(NameTakenError, ConfigError)  # ConfigError is exit 2
