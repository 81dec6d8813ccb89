"""The command line's options and how their values are parsed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from asyncbackup.bandwidth import parse_rate
from asyncbackup.compression import CODECS
from asyncbackup.config import DEFAULT_BASE_DELAY, DEFAULT_CHUNK_SIZE, EngineConfig, RetryPolicy
from asyncbackup.errors import ConfigError
from asyncbackup.exposition import DEFAULT_METRICS_ADDRESS, DEFAULT_PUSH_JOB
from asyncbackup.locks import DEFAULT_LOCK_WAIT
from asyncbackup.prune import DEFAULT_GRACE
from asyncbackup.storage.options import READABLE_STORAGE_CLASSES, SERVER_SIDE_ENCRYPTION

_SIZE = re.compile(r"(\d+)\s*([KMG]?)(i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8M', '8MiB', '512K' or '65536' as a number of bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 65536, 512K or 8M")
    unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(match.group(1)) * unit


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '24h' or '7d' as a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 0, 90s, 30m, 24h or 7d"
        )
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
    return float(match.group(1)) * unit


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a fault rate is between 0 and 1, not {text}")
    return value


def _bwlimit(text: str) -> float:
    try:
        return parse_rate(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--concurrency",
        type=int,
        default=EngineConfig().concurrency,
        help="transfers in flight at once (default %(default)s)",
    )
    common.add_argument(
        "--max-retries",
        type=int,
        default=RetryPolicy().max_attempts - 1,
        help="retries per transfer after its first attempt (default %(default)s)",
    )
    common.add_argument(
        "--retry-delay",
        type=float,
        default=DEFAULT_BASE_DELAY,
        help="first backoff ceiling, seconds (default %(default)s)",
    )
    common.add_argument(
        "--attempt-timeout",
        type=float,
        default=RetryPolicy().attempt_timeout,
        help="seconds one attempt may take (default %(default)s)",
    )
    common.add_argument(
        "--retry-budget",
        type=int,
        default=RetryPolicy().budget,
        help="retries the whole job may spend (default %(default)s)",
    )
    common.add_argument(
        "--metrics-file",
        type=Path,
        help="write Prometheus metrics here at the end (textfile collector format)",
    )
    common.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics while the job runs "
        "(0: a free port, logged)",
    )
    common.add_argument(
        "--metrics-address",
        default=DEFAULT_METRICS_ADDRESS,
        metavar="ADDRESS",
        help="the address --metrics-port binds (default %(default)s; 0.0.0.0 for every one)",
    )
    common.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push metrics to this Prometheus Pushgateway when the job ends, failed or not",
    )
    common.add_argument(
        "--push-job",
        default=DEFAULT_PUSH_JOB,
        metavar="NAME",
        help="the job label of the push (default %(default)s); grouped by instance and command",
    )
    common.add_argument(
        "--bwlimit",
        type=_bwlimit,
        metavar="RATE",
        help="cap chunk uploads and downloads at RATE bytes/s, e.g. 512K or 10M (MiB/s)",
    )
    common.add_argument(
        "--inject-faults",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="make RATE of store operations fail transiently (testing)",
    )
    common.add_argument(
        "--inject-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="add MS milliseconds to every store operation (testing)",
    )
    common.add_argument("--fault-seed", type=int, default=0, help="seed of --inject-faults")
    common.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)",
    )
    common.add_argument("--region", help="S3 region (default: $AWS_REGION or $AWS_DEFAULT_REGION)")
    common.add_argument(
        "--addressing-style",
        choices=("auto", "path", "virtual"),
        default="auto",
        help="S3 bucket addressing (default %(default)s; path for most S3-compatible servers)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log every step")
    common.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")

    parser = argparse.ArgumentParser(
        prog="asyncbackup",
        description="Back up a directory to S3, GCS or a local store, and restore it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backup = commands.add_parser("backup", parents=[common], help="back up a directory")
    backup.add_argument("source", type=Path, metavar="SOURCE_DIR")
    backup.add_argument("store", metavar="STORE")
    backup.add_argument("--name", help="backup name (default: the UTC time, 20261124T140724Z)")
    backup.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        help="split files into chunks of this size (default 8M)",
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
        "--strict",
        action="store_true",
        help="fail the backup, committing nothing, when a file vanishes, cannot be read, or "
        "keeps changing (default: skip it or store it as read, warn, and exit 3)",
    )
    restore = commands.add_parser("restore", parents=[common], help="restore a backup")
    restore.add_argument("store", metavar="STORE")
    restore.add_argument("name", metavar="NAME")
    restore.add_argument("target", type=Path, metavar="TARGET_DIR")
    restore.add_argument(
        "--overwrite",
        action="store_true",
        help="restore into a non-empty directory, replacing what is there",
    )
    listing = commands.add_parser("list", parents=[common], help="list the backups in a store")
    listing.add_argument("store", metavar="STORE")
    listing.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    showing = commands.add_parser("show", parents=[common], help="describe one backup")
    showing.add_argument("store", metavar="STORE")
    showing.add_argument("name", metavar="NAME")
    showing.add_argument("--json", action="store_true", help="with every entry, for scripts")
    showing.add_argument("--files", action="store_true", help="list every entry, like ls -l")
    differ = commands.add_parser(
        "diff", parents=[common], help="what was added, removed and changed between two backups"
    )
    differ.add_argument("store", metavar="STORE")
    differ.add_argument("old", metavar="A")
    differ.add_argument("new", metavar="B")
    differ.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    verify = commands.add_parser("verify", parents=[common], help="check a backup's chunks")
    verify.add_argument("store", metavar="STORE")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--deep", action="store_true", help="download and re-hash every chunk")
    delete = commands.add_parser("delete", parents=[common], help="delete a backup")
    delete.add_argument("store", metavar="STORE")
    delete.add_argument("name", metavar="NAME")
    unlocking = commands.add_parser(
        "unlock", parents=[common], help="remove stale repository locks (of jobs that died)"
    )
    unlocking.add_argument("store", metavar="STORE")
    unlocking.add_argument(
        "--force",
        action="store_true",
        help="remove every lock, live ones too: only when no job runs on the store",
    )
    prune = commands.add_parser(
        "prune", parents=[common], help="remove old backups, then the chunks no backup needs"
    )
    prune.add_argument("store", metavar="STORE")
    for rule, what in (
        ("last", "the N newest backups"),
        ("daily", "the newest backup of each of the last N days (UTC) that have one"),
        ("weekly", "the newest backup of each of the last N ISO weeks that have one"),
    ):
        prune.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N", help=f"keep {what}")
    prune.add_argument(
        "--grace",
        type=parse_duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help="never remove a chunk written this recently: it may belong to a backup still "
        "running (default 24h)",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="say what would be removed, and remove nothing"
    )
    for command in (backup, delete, prune):
        command.add_argument(
            "--lock-wait",
            type=parse_duration,
            default=DEFAULT_LOCK_WAIT,
            metavar="DURATION",
            help="how long to wait for a conflicting job's repository lock before failing "
            "(default 5m)",
        )
    return parser
