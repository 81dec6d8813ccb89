"""The commands that remove from a store: ``delete`` (a MANIFEST), ``prune`` (backups by
policy, then unused chunks and packs) and ``unlock`` (stale locks), each with its own options."""

from __future__ import annotations

import argparse

from asyncbackup.cli.groups import (
    CONCURRENCY,
    METRICS,
    CommandParser,
    add_command,
    add_name,
    add_store,
)
from asyncbackup.cli.values import parse_duration, parse_share, parse_size
from asyncbackup.defaults import DEFAULT_GRACE, DEFAULT_MAX_UNUSED


def add_delete(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``delete`` and its own options."""
    delete = add_command(
        commands, "delete", "delete a backup",
        description="Delete backup NAME's MANIFEST; its chunks stay until a prune.",
    )  # fmt: skip
    add_store(delete)
    add_name(delete, "the backup to delete")
    return delete


def add_prune(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``prune`` and its own options."""
    prune = add_command(
        commands, "prune", "remove old backups, then the chunks no backup needs",
        offers={CONCURRENCY, METRICS},
        description="Keep the backups the --keep-* rules select, delete the others, then "
        "remove every chunk no remaining backup needs and older than --grace.",
    )  # fmt: skip
    add_store(prune)
    for rule, what in (
        ("last", "the N newest backups"),
        ("daily", "the newest backup of each of the last N days (UTC) that have one"),
        ("weekly", "the newest backup of each of the last N ISO weeks that have one"),
        ("monthly", "the newest backup of each of the last N months (UTC) that have one"),
        ("yearly", "the newest backup of each of the last N years (UTC) that have one"),
    ):
        prune.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N", help=f"keep {what}")
    prune.add_argument(
        "--keep-within",
        type=parse_duration,
        default=0.0,
        metavar="DURATION",
        help="keep every backup that finished within DURATION (e.g. 7d) before the newest one "
        "of its group",
    )
    prune.add_argument(
        "--group-by",
        choices=("host,source", "host", "source", "none"),
        default="host,source",
        metavar="BY",
        help="host,source (the default): apply the policy within each group of backups of "
        "the same host and source; host or source: of the same host, or source; none: to all "
        "backups as one group",
    )
    prune.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="consider only backups made on HOST (repeatable); the others stay",
    )
    prune.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="PATH",
        help="consider only backups of source PATH (repeatable); the others stay",
    )
    prune.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG[,TAG]",
        help="consider only backups with every tag of TAG[,TAG] (repeatable: any of them); "
        "the others stay",
    )
    prune.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help="never remove a chunk written this recently: it may belong to a backup still "
        "running (default 24h)",
    )
    prune.add_argument(
        "--max-unused",
        type=parse_share,
        default=DEFAULT_MAX_UNUSED,
        metavar="SHARE",
        help="repack a pack once more than SHARE of its bytes is used by no remaining backup: "
        "its live chunks are copied into new packs and it is deleted (default 10%%; 0%% "
        "repacks every partly used pack; 'unlimited' never repacks, and packs no backup uses "
        "are still deleted)",
    )
    prune.add_argument(
        "--max-repack-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="copy at most SIZE of live chunks into new packs in one prune, the most wasteful "
        "packs first; the rest wait for the next prune (default: no limit)",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be removed, and remove nothing"
    )
    return prune


def add_unlock(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``unlock`` and its own options."""
    unlocking = add_command(
        commands, "unlock", "remove stale repository locks (of jobs that died)",
        description="Remove the locks of jobs that are gone: not refreshed for 30 minutes, or "
        "of a process no longer running on this host. Print one line per lock removed.",
    )  # fmt: skip
    add_store(unlocking)
    unlocking.add_argument(
        "--force",
        action="store_true",
        help="remove every lock, live ones too: only when no job runs on the store",
    )
    return unlocking
