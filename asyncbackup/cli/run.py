"""Running one command: the store, the engine, the signals, the metrics, the exit code."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from asyncbackup.backup import default_name
from asyncbackup.backup_options import BackupOptions, ChangeDetection, check_tag
from asyncbackup.bandwidth import Bandwidth
from asyncbackup.cli.arguments import parse_args
from asyncbackup.cli.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, report
from asyncbackup.compression import Compression
from asyncbackup.config import (
    DEFAULT_BUFFER_BUDGET,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PACK_SIZE,
    DEFAULT_PACK_THRESHOLD,
    EngineConfig,
    RetryPolicy,
)
from asyncbackup.engine import BackupEngine, Filters
from asyncbackup.errors import BackupError, BackupFailed, ConfigError
from asyncbackup.excludes import ExcludeOptions
from asyncbackup.exposition import check_pushgateway_url, push, serving
from asyncbackup.layout import LOCKS
from asyncbackup.locks import LockSettings
from asyncbackup.metrics import Metrics
from asyncbackup.packuse import RepackPolicy
from asyncbackup.patterns import read_pattern_files
from asyncbackup.progress import BarProgress, LogProgress, NoProgress
from asyncbackup.retention import RetentionPolicy
from asyncbackup.shards import ShardSpec, index_from_environment
from asyncbackup.storage import FaultyStorage, Storage, StoreOptions, open_storage
from asyncbackup.storage.options import DEFAULT_MAX_CONNECTIONS
from asyncbackup.stream import DEFAULT_STDIN_NAME, command_output, read_stdin

log = logging.getLogger("asyncbackup")
MOVES_DATA = frozenset({"backup", "restore", "cat"})
"""The commands that show a progress bar (and ``verify --deep``)."""


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
    return run_command(parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` (as ``parse_args`` returns it); returns the exit code."""
    release_freed_buffers_to_the_os()
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
    # -v: our own DEBUG lines (one per file stored or restored), not the SDKs' wire traces;
    # botocore also says "Found credentials in ..." at INFO on every run.
    logging.getLogger("asyncbackup").setLevel(logging.DEBUG if args.verbose else logging.NOTSET)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
    try:
        code = asyncio.run(_run(args))
        sys.stdout.flush()  # here rather than at exit, so that a closed pipe is caught below
        return code
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM (see _run)
        if args.command == "restore":
            log.error(
                "interrupted: the files restored until then are in place in %s, each whole; "
                "run the same restore again with --overwrite to finish it",
                args.target,
            )
        else:
            log.error("interrupted: nothing was committed")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped early (`list --json | head`). What the command did
        # stands; only its output went unread. Point stdout at /dev/null so that Python's own
        # flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    # SIGTERM (systemd, Kubernetes, a scheduler's timeout) stops the job as Ctrl-C does: the job
    # is cancelled, every transfer ends, nothing is committed, no temporary file is left. It
    # cancels the task itself rather than raising SIGINT, which a shell ignores in a job it starts
    # in the background: there, SIGTERM must still stop us.
    job = asyncio.current_task()
    assert job is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, job.cancel)
    metrics = Metrics()
    pushgateway: str | None = None
    try:
        config = EngineConfig(
            concurrency=getattr(args, "concurrency", EngineConfig().concurrency),
            max_manifest_size=args.max_manifest_size,
            buffer_budget=getattr(args, "buffer_budget", DEFAULT_BUFFER_BUDGET),
            chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE),
            pack_threshold=getattr(args, "pack_threshold", DEFAULT_PACK_THRESHOLD),
            pack_size=getattr(args, "pack_size", DEFAULT_PACK_SIZE),
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
        if getattr(args, "pushgateway", None) is not None:
            pushgateway = check_pushgateway_url(args.pushgateway)
        port, address = getattr(args, "metrics_port", None), getattr(args, "metrics_address", "")
        async with serving(metrics.registry, port=port, address=address):
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
        if getattr(args, "metrics_file", None) is not None:
            await asyncio.to_thread(metrics.write_textfile, args.metrics_file)
        if pushgateway is not None:  # a failed push only warns: the job's exit code stands
            key = {"instance": socket.gethostname(), "command": args.command}
            await push(metrics.registry, pushgateway, job=args.push_job, grouping_key=key)


def _open_store(args: argparse.Namespace) -> Storage:
    options = StoreOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        addressing_style=args.addressing_style,
        max_connections=max(getattr(args, "concurrency", 1), DEFAULT_MAX_CONNECTIONS),
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
    if args.command != "backup" and not await store.holds_repository():
        raise BackupError(
            f"no store at {args.store}: nothing was ever backed up there; check the path "
            "(a store is made by its first backup)"
        )
    interactive = sys.stderr.isatty() and not args.quiet
    progress = progress_for(args, interactive=interactive)
    limit = getattr(args, "bwlimit", None)
    bandwidth = Bandwidth(limit) if limit is not None else None
    locking = LockSettings(wait=getattr(args, "lock_wait", LockSettings().wait))
    engine = BackupEngine(
        store, config, metrics=metrics, progress=progress, bandwidth=bandwidth, locking=locking
    )
    redirect: Any = nullcontext()
    if interactive:
        from tqdm.contrib.logging import logging_redirect_tqdm  # a terminal's bar only

        redirect = logging_redirect_tqdm()  # the root logger's handler: log lines above the bar
    with ExitStack() as stack:  # the bar is gone before the summary is written
        stack.enter_context(redirect)
        stack.callback(progress.close)
        result = await _operate(args, engine)
    return report(args, result)


async def _backup_stream(args: argparse.Namespace, engine: BackupEngine) -> object:
    filename = args.stdin_name if args.stdin_name is not None else DEFAULT_STDIN_NAME
    if args.stdin_from_command is None:
        return await engine.backup_stream(
            read_stdin(), filename=filename, name=args.name, source="stdin"
        )
    async with command_output(args.stdin_from_command) as output:
        return await engine.backup_stream(
            output, filename=filename, name=args.name, source=f"command: {args.stdin_from_command}"
        )


async def _write_stdout(data: bytes) -> None:
    # Straight to the file descriptor: nothing else goes to stdout during cat, and a buffer
    # would only add a copy of every chunk.
    await asyncio.to_thread(_write_all, sys.stdout.fileno(), data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def shard_of_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ShardSpec | None:
    """The one shard a backup command runs (``--shard K/N``, or ``--shards N`` with
    ``--shard-index-env VAR``), or None for a whole backup.

    Raises:
        ConfigError: the options do not name one shard, or a sharded backup has no --name.
    """
    if args.dask is not None:
        if args.shard is not None or args.shard_index_env is not None:
            raise ConfigError("--dask runs every shard: give --shards N, not --shard or "
                              "--shard-index-env")  # fmt: skip
        if args.shards is None:
            raise ConfigError("--dask needs --shards N: how many tasks to split the job in (a "
                              "few per worker balance the work)")  # fmt: skip
        ShardSpec(0, args.shards)  # a count out of range is refused here
        return None
    if args.shard is None and args.shards is None and args.shard_index_env is None:
        return None
    if args.shard is not None:
        if args.shards is not None or args.shard_index_env is not None:
            raise ConfigError("--shard K/N names one shard: leave out --shards and "
                              "--shard-index-env")  # fmt: skip
        shard = ShardSpec.parse(args.shard)
    elif args.shards is None:
        raise ConfigError("--shard-index-env needs --shards N, the number of shards")
    elif args.shard_index_env is None:
        raise ConfigError("--shards N needs --shard-index-env VAR (one shard, its index from "
                          "VAR) or --dask ADDRESS (every shard, on a Dask cluster)")  # fmt: skip
    else:
        shard = index_from_environment(args.shard_index_env, args.shards, environ)
    if args.command == "backup" and args.name is None:
        raise ConfigError("a sharded backup needs --name: every shard and the commit must name "
                          "the same backup")  # fmt: skip
    return shard


async def _backup_on_dask(
    args: argparse.Namespace, engine: BackupEngine, options: BackupOptions
) -> object:
    from asyncbackup.dask_run import backup_on_dask

    name = args.name if args.name is not None else default_name()
    return await backup_on_dask(
        args.dask,
        count=args.shards,
        retries=args.dask_retries,
        opener=partial(_open_store, args),
        config=engine.config,
        locking=engine.locking,
        options=options,
        source=args.source,
        name=name,
        progress=engine.progress,
        commit=partial(engine.commit, name, shards=args.shards),
        warm=partial(engine.store.list_page, LOCKS, None),
    )


async def _restore_by_shards(
    args: argparse.Namespace, engine: BackupEngine, shard: ShardSpec | None
) -> object:
    if args.delete or args.include or args.exclude:
        raise ConfigError("a restore by shards restores every file: --delete, --include and "
                          "--exclude need a restore in one process")  # fmt: skip
    if args.finish and (shard is not None or args.dask is not None):
        raise ConfigError("--finish is the last step, run alone once every --shard restore "
                          "is done (--dask runs it itself)")  # fmt: skip
    if args.dask is None:
        return await engine.restore_shard(args.name, args.target, shard=shard)
    from asyncbackup.dask_run import restore_on_dask

    target = Path(args.target)
    if not args.overwrite and await asyncio.to_thread(_holds_anything, target):
        raise ConfigError(f"restore target {target} is not empty: give an empty or new "
                          "directory, or --overwrite")  # fmt: skip
    return await restore_on_dask(
        args.dask,
        count=args.shards,
        retries=args.dask_retries,
        opener=partial(_open_store, args),
        config=engine.config,
        name=args.name,
        target=target,
        progress=engine.progress,
    )


def _holds_anything(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except FileNotFoundError:
        return False


def progress_for(
    args: argparse.Namespace, *, interactive: bool
) -> BarProgress | LogProgress | NoProgress:
    """A bar on a terminal, log lines otherwise; nothing for commands that move no file data
    (an empty byte bar beside ``list`` or ``prune`` would only say nothing is happening)."""
    if args.command not in MOVES_DATA and not getattr(args, "deep", False):
        return NoProgress()
    return BarProgress(args.command) if interactive else LogProgress(args.command)


async def _operate(args: argparse.Namespace, engine: BackupEngine) -> object:
    if args.command == "backup" and str(args.source) == "-":
        if shard_of_args(args, os.environ) is not None:
            raise ConfigError("a backup from standard input ('-') cannot be split into shards")
        return await _backup_stream(args, engine)
    if args.command == "backup":
        if args.stdin_name is not None or args.stdin_from_command is not None:
            raise ConfigError(
                "--stdin-name and --stdin-from-command need SOURCE '-' (standard input), "
                f"not {args.source}"
            )
        patterns = await asyncio.to_thread(read_pattern_files, args.exclude_file)
        excludes = ExcludeOptions(
            patterns=(*args.exclude, *patterns),
            exclude_caches=args.exclude_caches,
            exclude_if_present=tuple(args.exclude_if_present),
            one_file_system=args.one_file_system,
        )
        changes = ChangeDetection(
            force=args.force, ignore_inode=args.ignore_inode, ignore_ctime=args.ignore_ctime
        )
        options = BackupOptions(
            strict=args.strict,
            excludes=excludes,
            xattrs=args.xattrs,
            parent=args.parent,
            changes=changes,
            tags=tuple(args.tag),
        )
        shard = shard_of_args(args, os.environ)
        if args.dask is not None:
            return await _backup_on_dask(args, engine, options)
        if shard is not None:
            return await engine.backup_shard(
                args.source, name=args.name, shard=shard, options=options
            )
        return await engine.backup(args.source, name=args.name, options=options)
    if args.command == "commit":
        return await engine.commit(args.name, shards=args.shards)
    if args.command == "cat":
        await engine.restore_file(args.name, args.path, _write_stdout)
        return None
    if args.command == "restore":
        shard = shard_of_args(args, os.environ)
        if args.dask is not None or shard is not None or args.finish:
            return await _restore_by_shards(args, engine, shard)
        return await engine.restore(
            args.name,
            args.target,
            overwrite=args.overwrite,
            delete=args.delete,
            include=args.include,
            exclude=args.exclude,
        )
    if args.command == "list":
        return await engine.list_backups(
            Filters(host=args.host, source=args.source, tags=tuple(args.tag))
        )
    if args.command == "show":
        return await engine.manifest(args.name)
    if args.command == "diff":
        return await engine.diff(args.old, args.new)
    if args.command == "verify":
        return await engine.verify(args.name, deep=args.deep)
    if args.command == "prune":
        group_by = () if args.group_by == "none" else tuple(args.group_by.split(","))
        policy = RetentionPolicy(
            keep_last=args.keep_last,
            keep_daily=args.keep_daily,
            keep_weekly=args.keep_weekly,
            keep_monthly=args.keep_monthly,
            keep_yearly=args.keep_yearly,
            keep_within=args.keep_within,
            group_by=group_by,
            hosts=tuple(args.host),
            sources=tuple(args.source),
            tags=tuple(tuple(check_tag(t) for t in tags.split(",")) for tags in args.tag),
        )
        repack = RepackPolicy(max_unused=args.max_unused, max_repack_bytes=args.max_repack_size)
        return await engine.prune(policy, grace=args.grace, dry_run=args.dry_run, repack=repack)
    if args.command == "unlock":
        return await engine.unlock(force=args.force)
    await engine.delete(args.name)
    return None
