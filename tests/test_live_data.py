"""Live data through the command line: a file that cannot be read is skipped with a WARNING,
recorded in the MANIFEST and ``show``, and the backup exits 3 ("committed with warnings");
``--strict`` keeps all-or-nothing. On a local store and on S3 (moto).

Root reads every file whatever its mode, so as root (CI) the CLI runs under ``setpriv`` without
the two capabilities that let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a file of mode 000 is
then as unreadable to it as to any backup job that lacks the rights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, ROOT, cli

SETPRIV = shutil.which("setpriv")


def cli_as_job(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a backup job bound by file modes: as root, without the capabilities that
    override them."""
    command = [sys.executable, "-m", "asyncbackup", *map(str, args)]
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("needs setpriv (Debian package util-linux) to drop root's capabilities")
        command = [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search", *command]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def source_with_an_unreadable_file(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    (source / "etc").mkdir(parents=True)
    (source / "etc" / "app.conf").write_text("port = 5432\n")
    (source / "etc" / "server.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (source / "etc" / "server.key").chmod(0o000)
    (source / "data.bin").write_bytes(os.urandom(100_000))
    return source


def test_an_unreadable_file_is_skipped_with_a_warning_and_exit_3(
    tmp_path: Path, store_url: str
) -> None:
    source = source_with_an_unreadable_file(tmp_path)
    store = store_url
    unreadable = source / "etc" / "server.key"
    backup = cli_as_job("backup", source, store, "--name", "nightly")
    assert backup.returncode == EXIT_WARNINGS, backup.stderr
    assert backup.stdout == "nightly\n"
    advice = "give the user running the backup read permission on it"  # issue 13, item 9
    assert f"WARNING cannot read {unreadable}: Permission denied: {advice}" in backup.stderr
    assert "backup nightly committed with 1 warnings" in backup.stderr
    assert "exit 3" in backup.stderr

    shown = cli("show", store, "nightly")
    assert shown.returncode == EXIT_OK, shown.stderr
    assert "warnings        1" in shown.stdout
    assert f"  unreadable etc/server.key: cannot read {unreadable}: Permission denied" in (
        shown.stdout
    )
    doc = json.loads(cli("show", store, "nightly", "--json").stdout)
    assert doc["format_version"] == 4  # its small chunks are packed: it has an INDEX
    assert doc["warnings"] == [
        {
            "path": "etc/server.key",
            "kind": "unreadable",
            "message": f"cannot read {unreadable}: Permission denied: {advice}, or run the "
            "backup as a user who has it; skipped",
        }
    ]
    assert [e["path"] for e in doc["entries"]] == [".", "data.bin", "etc", "etc/app.conf"]

    target = tmp_path / "restored"
    restored = cli("restore", store, "nightly", target)
    assert restored.returncode == EXIT_OK, restored.stderr
    assert (target / "etc" / "app.conf").read_text() == "port = 5432\n"
    assert (target / "data.bin").read_bytes() == (source / "data.bin").read_bytes()
    assert not (target / "etc" / "server.key").exists()


def test_with_strict_an_unreadable_file_fails_the_backup_and_commits_nothing(
    tmp_path: Path, store_url: str
) -> None:
    source = source_with_an_unreadable_file(tmp_path)
    store = store_url
    backup = cli_as_job("backup", source, store, "--name", "nightly", "--strict")
    assert backup.returncode == EXIT_FAILED, backup.stderr
    assert "backup failed, nothing was committed" in backup.stderr
    assert f"cannot read {source / 'etc' / 'server.key'}: Permission denied" in backup.stderr
    listing = cli("list", store, "--json")
    assert listing.returncode == EXIT_OK, listing.stderr
    assert json.loads(listing.stdout) == []


def test_a_clean_backup_still_exits_0(tmp_path: Path, store_url: str) -> None:
    source = source_with_an_unreadable_file(tmp_path)
    (source / "etc" / "server.key").chmod(0o644)
    backup = cli_as_job("backup", source, store_url, "--name", "n")
    assert backup.returncode == EXIT_OK, backup.stderr
    assert "warning" not in backup.stderr.lower()


def test_an_unreadable_directory_is_recorded_empty_with_a_warning(
    tmp_path: Path, store_url: str
) -> None:
    source = tmp_path / "source"
    (source / "locked").mkdir(parents=True)
    (source / "locked" / "inside.txt").write_text("cannot be listed\n")
    (source / "open.txt").write_text("fine\n")
    (source / "locked").chmod(0o000)
    try:
        backup = cli_as_job("backup", source, store_url, "--name", "n")
        strict = cli_as_job("backup", source, store_url, "--name", "s", "--strict")
    finally:
        (source / "locked").chmod(0o755)
    assert backup.returncode == EXIT_WARNINGS, backup.stderr
    message = f"cannot list directory {source / 'locked'}: Permission denied"
    advice = "give the user running the backup read and search permission on it"  # issue 13
    assert f"WARNING {message}: {advice}, or run the backup as a user who has them; what it " in (
        backup.stderr
    )
    assert "what it holds is skipped" in backup.stderr
    doc = json.loads(cli("show", store_url, "n", "--json").stdout)
    assert [(w["path"], w["kind"]) for w in doc["warnings"]] == [("locked", "unreadable")]
    assert [e["path"] for e in doc["entries"]] == [".", "locked", "open.txt"]
    assert strict.returncode == EXIT_FAILED, strict.stderr
    assert message in strict.stderr and "nothing was committed" in strict.stderr
    target = tmp_path / "restored"
    restored = cli("restore", store_url, "n", target)
    assert restored.returncode == EXIT_OK, restored.stderr
    assert sorted(os.listdir(target)) == ["locked", "open.txt"]
    assert os.listdir(target / "locked") == []
