"""The commands that bring files back: ``restore`` (whole, selected, or one shard) and ``cat``
(one file to standard output), each with its own options."""

from __future__ import annotations

import argparse

from asyncbackup.cli.groups import (
    BWLIMIT,
    CONCURRENCY,
    METRICS,
    CommandParser,
    add_command,
    add_name,
    add_shard_options,
    add_store,
)
from asyncbackup.cli.values import target_dir


def add_restore(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``restore`` and its own options."""
    restore = add_command(
        commands, "restore", "restore a backup", offers={CONCURRENCY, BWLIMIT, METRICS},
        description="Restore backup NAME from STORE into TARGET_DIR. Every chunk's hash and "
        "every file's size and hash are checked before the file takes its final name.",
    )  # fmt: skip
    add_store(restore)
    add_name(restore, "the backup to restore (see list)")
    restore.add_argument(
        "target", type=target_dir, metavar="TARGET_DIR", help="where to restore: empty or absent"
    )
    restore.add_argument(
        "--overwrite",
        action="store_true",
        help="restore into a non-empty directory: files already in place with the right size "
        "and sha256 are kept, others replaced; what the backup lacks is kept",
    )
    restore.add_argument(
        "--delete",
        action="store_true",
        help="like --overwrite, and remove what the backup does not have (as rsync --delete)",
    )
    add_shard_options(restore, "restore", "after every shard, one run with --finish")
    restore.add_argument(
        "--finish",
        action="store_true",
        help="the last step of a restore by --shard runs: check every file is in place, then "
        "create empty directories and symlinks and set directory modes and mtimes",
    )
    restore.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="restore only the entries this gitignore-style pattern matches, and the "
        "directories above them (repeatable)",
    )
    restore.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="do not restore the entries this gitignore-style pattern matches (repeatable)",
    )
    return restore


def add_cat(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``cat`` and its own options."""
    cat = add_command(
        commands, "cat", "write one file of a backup to standard output",
        offers={CONCURRENCY, BWLIMIT},
        description="Write file PATH of backup NAME to standard output, each chunk checked "
        "before it is written.",
    )  # fmt: skip
    add_store(cat)
    add_name(cat, "the backup that holds the file")
    cat.add_argument("path", metavar="PATH", help="the file's path in the backup")
    return cat
