"""The command line: each command, its own arguments and options, in the order ``--help``
shows them. Each command's own arguments and options are added by its group's module:
``backup_arguments.py`` (backup, commit), ``restore_arguments.py`` (restore, cat),
``inspect_arguments.py`` (list, show, diff, verify), ``maintenance_arguments.py`` (delete,
prune, unlock). The option groups commands share are in ``groups.py``, value parsers in
``values.py``; each option also reads an ``ASYNCBACKUP_*`` variable (``environment.py``), and
docs/commands.md is generated from this parser (``reference.py``, ``make docs``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from asyncbackup.cli import environment
from asyncbackup.cli.backup_arguments import add_backup, add_commit
from asyncbackup.cli.groups import CommandParser, add_shared_options
from asyncbackup.cli.inspect_arguments import add_diff, add_list, add_show, add_verify
from asyncbackup.cli.maintenance_arguments import add_delete, add_prune, add_unlock
from asyncbackup.cli.restore_arguments import add_cat, add_restore
from asyncbackup.cli.values import parse_duration
from asyncbackup.defaults import DEFAULT_LOCK_WAIT


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each option also reads its ``ASYNCBACKUP_*`` variable."""
    parser = argparse.ArgumentParser(
        prog="asyncbackup",
        description="Back up a directory to S3, GCS or a local store, and restore it.",
        epilog="Every option can also be set by an environment variable, shown beside it in "
        "each command's --help (the flag wins): ASYNCBACKUP_STORE, ASYNCBACKUP_CONCURRENCY... "
        "Exit codes: 0 done, 1 failed (nothing committed), 2 bad usage, 3 committed with "
        "warnings, 130 interrupted.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands",
        parser_class=CommandParser,
    )  # fmt: skip

    backup = add_backup(commands)
    add_restore(commands)
    commit = add_commit(commands)
    add_list(commands)
    add_show(commands)
    add_cat(commands)
    add_diff(commands)
    add_verify(commands)
    delete = add_delete(commands)
    prune = add_prune(commands)
    for command in (backup, commit, delete, prune):
        command.add_argument(
            "--lock-wait",
            type=parse_duration,
            default=DEFAULT_LOCK_WAIT,
            metavar="DURATION",
            help="how long to wait for a conflicting job's repository lock (a backup for a "
            "running prune, a prune for running backups) before failing (default 5m)",
        )
    add_unlock(commands)
    for command in commands.choices.values():
        add_shared_options(command)
    environment.document(parser)
    return parser


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Parse ``argv`` (default: sys.argv), options missing from it taken from ``environ``
    (default: os.environ). Exits 2 with a usage message on bad input."""
    parser = build_parser()
    environment.apply(parser, os.environ if environ is None else environ)
    if "_ARGCOMPLETE" in os.environ:  # only when the shell asks: --help stays fast
        import argcomplete

        argcomplete.autocomplete(parser)
    return parser.parse_args(argv)


class _VersionAction(argparse._VersionAction):
    """``--version``, looked up only when asked: importlib.metadata costs ``--help`` 25 ms."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        self.version = f"%(prog)s {_version()}"
        super().__call__(parser, namespace, values, option_string)


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("asyncbackup")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"
