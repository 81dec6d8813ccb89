"""The command line explains itself: help groups, --version, completion, options from the
environment (the flag winning)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from asyncbackup.cli import environment
from asyncbackup.cli.arguments import build_parser, parse_args
from tests.conftest import assert_same_tree, make_tree
from tests.test_cli import EXIT_OK, EXIT_USAGE, ROOT, cli

GROUPS = ["arguments", "{} options", "transfer options", "metrics options", "global options"]


def help_of(command: str) -> str:
    for parser in environment.command_parsers(build_parser()):
        if parser.prog == f"asyncbackup {command}":
            return parser.format_help()
    raise AssertionError(f"no command {command}")


def titles(text: str) -> list[str]:
    return re.findall(r"^(\S[^:\n]*):$", text, re.MULTILINE)


@pytest.mark.parametrize(
    ("command", "groups"),
    [
        ("backup", GROUPS),
        ("restore", GROUPS),
        ("verify", GROUPS),
        ("list", ["arguments", "list options", *GROUPS[2:]]),
        ("show", ["arguments", "show options", "global options"]),
        ("delete", ["arguments", "delete options", "global options"]),
    ],
)  # fmt: skip
def test_help_shows_own_arguments_first_then_shared_groups_then_testing(
    command: str, groups: list[str]
) -> None:
    text = help_of(command)
    assert titles(text) == [g.format(command) for g in groups] + ["testing options"]
    assert text.count("--max-retries") == 1  # global options once, not in the usage line too
    for positional in re.findall(r"\b(STORE|NAME|SOURCE_DIR|TARGET_DIR)\b", text.split("\n")[0]):
        # each positional argument is described in the arguments group
        assert re.search(rf"^  {positional}\s+\S", text, re.MULTILINE), positional


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["list", "./s", "--bwlimit", "1M"], "--bwlimit"),
        (["delete", "./s", "n", "--concurrency", "4"], "--concurrency"),
        (["show", "./s", "n", "--metrics-file", "m.prom"], "--metrics-file"),
    ],
)
def test_an_option_that_does_nothing_for_a_command_is_refused(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv, environ={})
    assert stopped.value.code == EXIT_USAGE
    assert f"unrecognized arguments: {option}" in capsys.readouterr().err
    assert option not in help_of(argv[0])


def test_version_prints_the_installed_version() -> None:
    result = cli("--version")
    assert result.returncode == EXIT_OK
    assert result.stdout.strip() == f"asyncbackup {importlib.metadata.version('asyncbackup')}"


def test_help_names_each_option_variable() -> None:
    text = help_of("backup")
    for variable in ("$ASYNCBACKUP_STORE", "$ASYNCBACKUP_CONCURRENCY", "$ASYNCBACKUP_VERBOSE"):
        assert variable in text
    assert "$ASYNCBACKUP_BACKUP_EXCLUDE" in text  # a command's own option: scoped to it
    assert "$ASYNCBACKUP_RESTORE_EXCLUDE" in help_of("restore")


def test_a_variable_of_one_command_never_reaches_another() -> None:
    env = {"ASYNCBACKUP_BACKUP_EXCLUDE": "*.log cache/", "ASYNCBACKUP_BACKUP_NAME": "nightly"}
    backup = parse_args(["backup", "src", "store"], environ=env)
    assert (backup.exclude, backup.name) == (["*.log", "cache/"], "nightly")
    restore = parse_args(["restore", "store", "b", "out"], environ=env)
    assert restore.exclude == []  # a nightly job's excludes never leave files out of a restore
    assert restore.name == "b"


def test_options_come_from_the_environment_and_the_flag_wins() -> None:
    env = {
        "ASYNCBACKUP_STORE": "s3://bucket/env",
        "ASYNCBACKUP_CONCURRENCY": "3",
        "ASYNCBACKUP_VERBOSE": "yes",
        "ASYNCBACKUP_BACKUP_CHUNK_SIZE": "1M",
        "ASYNCBACKUP_BACKUP_COMPRESSION": "zstd",
    }
    args = parse_args(["backup", "src"], environ=env)
    assert (args.store, args.concurrency, args.verbose) == ("s3://bucket/env", 3, True)
    assert (args.chunk_size, args.compression) == (2**20, "zstd")
    args = parse_args(["backup", "src", "./flag", "--concurrency", "5"], environ=env)
    assert (args.source, args.store, args.concurrency) == (Path("src"), "./flag", 5)
    args = parse_args(["restore", "nightly", "out"], environ=env)
    assert (args.store, args.name, args.target) == ("s3://bucket/env", "nightly", Path("out"))
    args = parse_args(["backup", "src", "s"], environ={"ASYNCBACKUP_VERBOSE": "0"})
    assert args.verbose is False


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ASYNCBACKUP_CONCURRENCY", "many", "ASYNCBACKUP_CONCURRENCY='many': invalid literal"),
        ("ASYNCBACKUP_VERBOSE", "maybe", "ASYNCBACKUP_VERBOSE='maybe': use 1, true, yes or on"),
        ("ASYNCBACKUP_BACKUP_COMPRESSION", "lz4", "_COMPRESSION='lz4': choose from none"),
        ("ASYNCBACKUP_BACKUP_CHUNK_SIZE", "big", "_CHUNK_SIZE='big': invalid size 'big'"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(
    variable: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(["backup", "src", "store"], environ={variable: value})
    assert stopped.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_nightly_job_configured_by_the_environment_backs_up_and_restores(
    tmp_path: Path,
) -> None:
    source = make_tree(tmp_path / "source")
    env = {
        **os.environ,
        "ASYNCBACKUP_STORE": str(tmp_path / "store"),
        "ASYNCBACKUP_BACKUP_NAME": "nightly",
        "ASYNCBACKUP_METRICS_FILE": str(tmp_path / "backup.prom"),
    }
    run = [sys.executable, "-m", "asyncbackup"]
    backup = subprocess.run(
        [*run, "backup", str(source)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert backup.returncode == EXIT_OK, backup.stderr
    assert backup.stdout.strip() == "nightly"
    assert "backup_files_total" in (tmp_path / "backup.prom").read_text()
    restore = subprocess.run(
        [*run, "restore", "nightly", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(source, tmp_path / "out")


def test_shell_completion_offers_the_options_of_a_command(tmp_path: Path) -> None:
    line = "asyncbackup backup --compr"
    answer = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }
    result = subprocess.run(
        [sys.executable, "-m", "asyncbackup"], env=env, capture_output=True, cwd=ROOT
    )
    assert result.returncode == EXIT_OK
    assert set(answer.read_text().split("\v")) == {"--compression", "--compression-level"}
