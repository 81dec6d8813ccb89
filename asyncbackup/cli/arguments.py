"""The command line: each command, its own arguments and options, in the order ``--help``
shows them. The option groups commands share are in ``groups.py``, value parsers in
``values.py``; each option also reads an ``ASYNCBACKUP_*`` variable (``environment.py``), and
docs/commands.md is generated from this parser (``reference.py``, ``make docs``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncbackup.cli import environment
from asyncbackup.cli.groups import (
    BWLIMIT,
    CONCURRENCY,
    METRICS,
    CommandParser,
    add_command,
    add_name,
    add_shared_options,
    add_store,
)
from asyncbackup.cli.values import parse_duration, parse_share, parse_size, target_dir
from asyncbackup.compression import CODECS
from asyncbackup.config import DEFAULT_CHUNK_SIZE, DEFAULT_PACK_SIZE, DEFAULT_PACK_THRESHOLD
from asyncbackup.defaults import (
    DEFAULT_GRACE,
    DEFAULT_LOCK_WAIT,
    DEFAULT_MAX_UNUSED,
    DEFAULT_STDIN_NAME,
)
from asyncbackup.storage.options import READABLE_STORAGE_CLASSES, SERVER_SIDE_ENCRYPTION


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

    backup = add_command(
        commands, "backup", "back up a directory, or standard input ('-')",
        offers={CONCURRENCY, BWLIMIT, METRICS},
        description="Back up SOURCE_DIR into STORE as a new backup; print its name. Only the "
        "chunks the store lacks are uploaded; the backup exists once its MANIFEST is written.",
    )  # fmt: skip
    backup.add_argument(
        "source", type=Path, metavar="SOURCE_DIR", help="the directory, or '-': standard input"
    )
    add_store(backup)
    backup.add_argument(
        "--name",
        help="the backup's name (default: the UTC time to the millisecond and a random "
        "suffix, such as 20261124T140724.123Z-3f9a1c)",
    )
    backup.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help="split files into chunks of this size (default 8M)",
    )
    backup.add_argument(
        "--pack-threshold",
        type=parse_size,
        default=DEFAULT_PACK_THRESHOLD,
        metavar="SIZE",
        help="chunks smaller than this (as stored) are gathered into packs, one object for many "
        "(default 1M; 0: no packs, one object per chunk)",
    )
    backup.add_argument(
        "--pack-size",
        type=parse_size,
        default=DEFAULT_PACK_SIZE,
        metavar="SIZE",
        help="store a pack once it holds this much (default 16M)",
    )
    backup.add_argument(
        "--storage-class",
        metavar="CLASS",
        help="S3 storage class of the chunks: " + ", ".join(READABLE_STORAGE_CLASSES),
    )
    backup.add_argument(
        "--sse", choices=SERVER_SIDE_ENCRYPTION, help="S3 server-side encryption of every object"
    )
    backup.add_argument("--sse-kms-key-id", metavar="KEY", help="the KMS key for --sse aws:kms")
    backup.add_argument(
        "--compression",
        choices=CODECS,
        default="none",
        help="compress each chunk on its own (default %(default)s); a restore needs no flag",
    )
    backup.add_argument(
        "--compression-level",
        type=int,
        metavar="N",
        help="zstd 1-22 (default 3) or gzip 1-9 (default 6)",
    )
    backup.add_argument(
        "--parent",
        metavar="NAME",
        help="compare with this backup to skip unchanged files (default: the newest backup "
        "of this host and source)",
    )
    backup.add_argument(
        "--force",
        action="store_true",
        help="read every file, trust no parent, and list the store for what it holds",
    )
    backup.add_argument(
        "--ignore-inode",
        action="store_true",
        help="a file whose inode changed is still unchanged (network file systems, FUSE)",
    )
    backup.add_argument(
        "--ignore-ctime",
        action="store_true",
        help="a file whose ctime changed is still unchanged (file systems without a stable ctime)",
    )
    backup.add_argument(
        "--stdin-name",
        metavar="NAME",
        help="with SOURCE '-': the name of the one file standard input is stored as "
        f"(default {DEFAULT_STDIN_NAME})",
    )
    backup.add_argument(
        "--stdin-from-command",
        metavar="COMMAND",
        help="with SOURCE '-': run COMMAND (no shell) and store its output; if it exits "
        "non-zero the backup fails and nothing is committed",
    )
    backup.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out what this gitignore-style pattern matches (repeatable)",
    )
    backup.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="read --exclude patterns from FILE, one a line, as in a .gitignore (repeatable)",
    )
    backup.add_argument(
        "--exclude-caches",
        action="store_true",
        help="leave out directories that hold a valid CACHEDIR.TAG",
    )
    backup.add_argument(
        "--exclude-if-present",
        action="append",
        default=[],
        metavar="NAME",
        help="leave out directories that hold a file named NAME (repeatable)",
    )
    backup.add_argument(
        "--one-file-system",
        action="store_true",
        help="do not descend into directories on another file system (mount points are kept, "
        "empty)",
    )
    backup.add_argument(
        "--xattrs",
        action="store_true",
        help="record extended attributes (a listing per entry, so off by default); a restore "
        "puts back whatever a backup recorded",
    )
    backup.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON document instead of the backup's name",
    )
    backup.add_argument(
        "--strict",
        action="store_true",
        help="fail the backup, committing nothing, when a file vanishes, cannot be read, or "
        "keeps changing (default: skip it or store it as read, warn, and exit 3)",
    )
    backup.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="record TAG in the backup (repeatable); list and show print tags, prune --tag "
        "selects by them",
    )

    _add_shard_options(backup, "back up", "'commit' then makes the backup")

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
    _add_shard_options(restore, "restore", "after every shard, one run with --finish")
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

    commit = add_command(
        commands, "commit", "make one backup from the shard records of --shard runs",
        offers={CONCURRENCY, METRICS},
        description="Check the N shard records of backup NAME (same source and options, no "
        "path twice, every chunk stored), write its MANIFEST, and remove the records. A "
        "missing or failed shard exits 1 naming it, and nothing is committed.",
    )  # fmt: skip
    add_store(commit)
    commit.add_argument("--name", required=True, help="the backup the shards were run for")
    commit.add_argument(
        "--shards", type=int, required=True, metavar="N", help="how many shards it was split in"
    )

    listing = add_command(
        commands, "list", "list the backups in a store", offers={CONCURRENCY, METRICS},
        description="List the committed backups in STORE, oldest finished first (--host, --source "
        "and --tag keep only the matching ones).",
    )  # fmt: skip
    add_store(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    listing.add_argument("--host", help="only the backups made on this host")
    listing.add_argument("--source", metavar="PATH", help="only the backups of this directory")
    listing.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only the backups with this tag (repeat: with every one of them)",
    )

    showing = add_command(
        commands, "show", "describe one backup",
        description="Describe backup NAME: when, from where, totals, codec; --files lists it.",
    )  # fmt: skip
    add_store(showing)
    add_name(showing, "the backup to describe")
    showing.add_argument("--json", action="store_true", help="with every entry, for scripts")
    showing.add_argument("--files", action="store_true", help="list every entry, like ls -l")

    cat = add_command(
        commands, "cat", "write one file of a backup to standard output",
        offers={CONCURRENCY, BWLIMIT},
        description="Write file PATH of backup NAME to standard output, each chunk checked "
        "before it is written.",
    )  # fmt: skip
    add_store(cat)
    add_name(cat, "the backup that holds the file")
    cat.add_argument("path", metavar="PATH", help="the file's path in the backup")

    differ = add_command(
        commands, "diff", "what was added, removed and changed between two backups",
        description="Compare backups A and B of STORE: entries added, removed and changed "
        "(type, size, mode, content by hash, link target).",
    )  # fmt: skip
    add_store(differ)
    add_name(differ, "the older backup", metavar="A", dest="old")
    add_name(differ, "the newer backup", metavar="B", dest="new")
    differ.add_argument("--json", action="store_true", help="one JSON document, for scripts")

    verify = add_command(
        commands, "verify", "check that a backup (or every backup) would restore",
        offers={CONCURRENCY, BWLIMIT, METRICS},
        description="Check that every chunk backup NAME (every backup, without NAME) needs is "
        "in STORE (one listing); with --deep, download each chunk once, check its hash, and "
        "check each file's size and sha256 from its chunks as a restore does. Exit 1 if any "
        "chunk is missing or corrupt, a file would not restore, or a MANIFEST cannot be read.",
    )  # fmt: skip
    add_store(verify)
    verify.add_argument(
        "name", metavar="NAME", nargs="?", help="the backup to check (default: every backup)"
    )
    verify.add_argument(
        "--deep",
        action="store_true",
        help="download every chunk once, re-hash it, and check each file's size and sha256",
    )

    delete = add_command(
        commands, "delete", "delete a backup",
        description="Delete backup NAME's MANIFEST; its chunks stay until a prune.",
    )  # fmt: skip
    add_store(delete)
    add_name(delete, "the backup to delete")

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
    for command in (backup, commit, delete, prune):
        command.add_argument(
            "--lock-wait",
            type=parse_duration,
            default=DEFAULT_LOCK_WAIT,
            metavar="DURATION",
            help="how long to wait for a conflicting job's repository lock (a backup for a "
            "running prune, a prune for running backups) before failing (default 5m)",
        )

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
    for command in commands.choices.values():
        add_shared_options(command)
    environment.document(parser)
    return parser


def _add_shard_options(parser: CommandParser, verb: str, then: str) -> None:
    """--shard, --shards, --shard-index-env and --dask: one operation made by many processes
    (docs/scaleout.md)."""
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help=f"{verb} only shard K (from 0) of N; {then} (docs/scaleout.md)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="the number of shards, with --shard-index-env (one shard) or --dask (all of them)",
    )
    parser.add_argument(
        "--shard-index-env",
        metavar="VAR",
        help="take K from the variable VAR: JOB_COMPLETION_INDEX (Kubernetes Indexed Job), "
        "SLURM_ARRAY_TASK_ID, AWS_BATCH_JOB_ARRAY_INDEX, or any",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the --shards N shards as tasks on this dask.distributed scheduler "
        "(tcp://HOST:8786), whose workers see the same paths; needs asyncbackup[dask]",
    )
    parser.add_argument(
        "--dask-retries",
        type=int,
        default=2,
        metavar="N",
        help="times Dask runs a failed shard again (default %(default)s); a worker that dies "
        "has its shard run elsewhere anyway",
    )


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
