"""The commands that make a backup: ``backup`` (a directory or standard input, whole or one
shard) and ``commit`` (one backup from the shard records), each with its own options."""

from __future__ import annotations

import argparse
from pathlib import Path

from asyncbackup.cli.groups import (
    BWLIMIT,
    CONCURRENCY,
    METRICS,
    CommandParser,
    add_command,
    add_shard_options,
    add_store,
)
from asyncbackup.cli.values import parse_size
from asyncbackup.compression import CODECS
from asyncbackup.config import DEFAULT_CHUNK_SIZE, DEFAULT_PACK_SIZE, DEFAULT_PACK_THRESHOLD
from asyncbackup.defaults import DEFAULT_STDIN_NAME
from asyncbackup.storage.options import READABLE_STORAGE_CLASSES, SERVER_SIDE_ENCRYPTION


def add_backup(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``backup`` and its own options."""
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

    add_shard_options(backup, "back up", "'commit' then makes the backup")
    return backup


def add_commit(commands: argparse._SubParsersAction[CommandParser]) -> CommandParser:
    """``commit`` and its own options."""
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
    return commit
