"""The command line: ``asyncbackup backup|restore|list|show|verify|delete|prune``.

Exit codes: 0 done; 1 the operation failed and nothing was committed (or verify found damage);
2 bad usage or configuration; 130 interrupted (SIGINT or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from asyncbackup import show
from asyncbackup.backup import BackupSummary
from asyncbackup.bandwidth import Bandwidth, parse_rate
from asyncbackup.compression import CODECS, Compression
from asyncbackup.config import DEFAULT_BASE_DELAY, DEFAULT_CHUNK_SIZE, EngineConfig, RetryPolicy
from asyncbackup.engine import BackupEngine, VerifyReport
from asyncbackup.errors import BackupError, BackupFailed, ConfigError
from asyncbackup.exposition import (
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_PUSH_JOB,
    check_pushgateway_url,
    push,
    serving,
)
from asyncbackup.manifest import Manifest
from asyncbackup.metrics import Metrics
from asyncbackup.progress import BarProgress, LogProgress
from asyncbackup.prune import DEFAULT_GRACE, PruneReport
from asyncbackup.restore import RestoreSummary
from asyncbackup.retention import RetentionPolicy
from asyncbackup.storage import FaultyStorage, Storage, StoreOptions, open_storage
from asyncbackup.storage.options import (
    DEFAULT_MAX_CONNECTIONS,
    READABLE_STORAGE_CLASSES,
    SERVER_SIDE_ENCRYPTION,
)

log = logging.getLogger("asyncbackup")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
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

    parser = argparse.ArgumentParser(prog="asyncbackup", description=__doc__.split("\n")[0])
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
    verify = commands.add_parser("verify", parents=[common], help="check a backup's chunks")
    verify.add_argument("store", metavar="STORE")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--deep", action="store_true", help="download and re-hash every chunk")
    delete = commands.add_parser("delete", parents=[common], help="delete a backup")
    delete.add_argument("store", metavar="STORE")
    delete.add_argument("name", metavar="NAME")
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
    return parser


def release_freed_buffers_to_the_os() -> None:
    """Have glibc map every allocation of 1 MiB or more on its own, and unmap it when freed.

    Chunks are megabytes, allocated and freed in worker threads. By default glibc then raises its
    mmap threshold and keeps freed chunks in per-thread arenas, so the resident size grows well past
    the data actually held (benchmarks/memory.py measures it). The CLI owns its process, so it sets
    this; a service that embeds the engine can set MALLOC_MMAP_THRESHOLD_=1048576 itself.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(1024 * 1024))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    release_freed_buffers_to_the_os()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
    if not args.verbose:  # botocore says "Found credentials in ..." at INFO on every run
        logging.getLogger("botocore").setLevel(logging.WARNING)
        logging.getLogger("aiobotocore").setLevel(logging.WARNING)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        log.error("interrupted: nothing was committed")
        return EXIT_INTERRUPTED


async def _run(args: argparse.Namespace) -> int:
    # SIGTERM (systemd, Kubernetes, a scheduler's timeout) stops the job as Ctrl-C does: asyncio
    # cancels it, every transfer ends, nothing is committed, no temporary file is left.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, signal.raise_signal, signal.SIGINT
    )
    metrics = Metrics()
    pushgateway: str | None = None
    try:
        config = EngineConfig(
            concurrency=args.concurrency,
            chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE),
            compression=Compression(
                getattr(args, "compression", "none"), getattr(args, "compression_level", None)
            ),
            retry=RetryPolicy(
                max_attempts=args.max_retries + 1,
                base_delay=args.retry_delay,
                max_delay=max(args.retry_delay, RetryPolicy().max_delay),
                attempt_timeout=args.attempt_timeout,
                budget=args.retry_budget,
            ),
        )
        if args.pushgateway is not None:
            pushgateway = check_pushgateway_url(args.pushgateway)
        async with serving(metrics.registry, port=args.metrics_port, address=args.metrics_address):
            store = _open_store(args)
            async with store:
                return await _command(args, store, config, metrics)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except BackupFailed as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except BackupError as exc:
        log.error("%s failed: %s", args.command, exc)
        return EXIT_FAILED
    finally:
        if args.metrics_file is not None:
            await asyncio.to_thread(metrics.write_textfile, args.metrics_file)
        if pushgateway is not None:  # a failed push only warns: the job's exit code stands
            key = {"instance": socket.gethostname(), "command": args.command}
            await push(metrics.registry, pushgateway, job=args.push_job, grouping_key=key)


def _open_store(args: argparse.Namespace) -> Storage:
    options = StoreOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        max_connections=max(args.concurrency, DEFAULT_MAX_CONNECTIONS),
        storage_class=getattr(args, "storage_class", None),
        server_side_encryption=getattr(args, "sse", None),
        kms_key_id=getattr(args, "sse_kms_key_id", None),
    )
    s3_only = options.s3_only or args.addressing_style != "auto"
    if s3_only and not args.store.lower().startswith("s3://"):
        raise ConfigError(
            f"{args.store}: --endpoint-url, --region, --addressing-style, --storage-class and "
            "--sse apply to s3:// stores only (a gs:// store finds an emulator through "
            "STORAGE_EMULATOR_HOST)"
        )
    store = open_storage(args.store, options)
    if args.inject_faults or args.inject_latency:
        if args.inject_latency < 0:
            raise ConfigError(f"--inject-latency must not be negative, not {args.inject_latency}")
        store = FaultyStorage(
            store,
            rate=args.inject_faults,
            latency=args.inject_latency / 1000,
            seed=args.fault_seed,
        )
    return store


async def _command(
    args: argparse.Namespace, store: Storage, config: EngineConfig, metrics: Metrics
) -> int:
    interactive = sys.stderr.isatty() and not args.quiet
    progress = BarProgress(args.command) if interactive else LogProgress(args.command)
    bandwidth = Bandwidth(args.bwlimit) if args.bwlimit is not None else None
    engine = BackupEngine(store, config, metrics=metrics, progress=progress, bandwidth=bandwidth)
    redirect: Any = nullcontext()
    if interactive:
        redirect = logging_redirect_tqdm()  # the root logger's handler: log lines above the bar
    with ExitStack() as stack:  # the bar is gone before the summary is written
        stack.enter_context(redirect)
        stack.callback(progress.close)
        result = await _operate(args, engine)
    return _report(args, result)


async def _operate(args: argparse.Namespace, engine: BackupEngine) -> object:
    if args.command == "backup":
        return await engine.backup(args.source, name=args.name)
    if args.command == "restore":
        return await engine.restore(args.name, args.target, overwrite=args.overwrite)
    if args.command == "list":
        return await engine.list_backups()
    if args.command == "show":
        return await engine.manifest(args.name)
    if args.command == "verify":
        return await engine.verify(args.name, deep=args.deep)
    if args.command == "prune":
        policy = RetentionPolicy(
            keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly
        )
        return await engine.prune(policy, grace=args.grace, dry_run=args.dry_run)
    await engine.delete(args.name)
    return None


def _report(args: argparse.Namespace, result: object) -> int:
    if isinstance(result, BackupSummary):
        b = result
        log.info(
            "backup %s committed: %d files, %d dirs, %d links, %d skipped; %s read, "
            "%d chunks uploaded (%s), %d already stored; %d retries; %.1fs, %s/s",
            b.name, b.files, b.dirs, b.symlinks, b.skipped, _mib(b.bytes),
            b.chunks_uploaded, _mib(b.bytes_uploaded), b.chunks_skipped, b.retries,
            b.seconds, _mib(b.bytes / max(b.seconds, 1e-9)),
        )  # fmt: skip
        print(b.name)
    elif isinstance(result, RestoreSummary):
        r = result
        log.info(
            "restored %s into %s: %d files, %d dirs, %d links, %s; %d chunks downloaded; "
            "%d retries; %.1fs, %s/s",
            r.name, args.target, r.files, r.dirs, r.symlinks, _mib(r.bytes),
            r.chunks_downloaded, r.retries, r.seconds, _mib(r.bytes / max(r.seconds, 1e-9)),
        )  # fmt: skip
    elif isinstance(result, VerifyReport):
        return _report_verify(result)
    elif isinstance(result, PruneReport):
        for line in result.decision_lines():  # stdout: what a script needs
            print(line)
        log.info("%s", result.summary())
    elif isinstance(result, Manifest) and args.json:
        print(json.dumps(show.document(result), indent=1))
    elif isinstance(result, Manifest):
        print(show.text(result, files=args.files))
    elif isinstance(result, list) and args.json:
        print(json.dumps([asdict(i) for i in result], indent=1))
    elif isinstance(result, list):
        if not result:  # say so: a mistyped store path also lists nothing
            log.info("no backups in %s", args.store)
        for i in result:
            where = f"{i.finished}  {i.files} files  {_mib(i.bytes)}  {i.host}:{i.source}"
            print(f"{i.name}  {f'PROBLEM: {i.problem}' if i.problem else where}")
    else:
        log.info("deleted backup %s (its chunks stay until a prune)", args.name)
    return EXIT_OK


def _report_verify(report: VerifyReport) -> int:
    for what, damaged in (("missing", report.missing), ("corrupt", report.corrupt)):
        for digest, paths in sorted(damaged.items()):
            shown = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
            log.error("chunk %s is %s; it holds part of: %s", digest, what, shown)
    kind = "deep" if report.deep else "presence"
    if not report.ok:
        log.error(
            "verify (%s) of %s: %d missing and %d corrupt of %d chunks",
            kind, report.name, len(report.missing), len(report.corrupt), report.chunks_checked,
        )  # fmt: skip
        return EXIT_FAILED
    log.info("verify (%s) of %s: all %d chunks ok", kind, report.name, report.chunks_checked)
    return EXIT_OK


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
