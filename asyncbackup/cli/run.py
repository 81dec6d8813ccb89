"""Running one command: the store, the engine, the signals, the metrics, the exit code.

The store comes from ``open_store.py``; what each command asks of the engine is in
``operate.py``, and the shard and Dask options in ``sharding.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from typing import Any

from asyncbackup.bandwidth import Bandwidth
from asyncbackup.cli.arguments import parse_args
from asyncbackup.cli.open_store import open_store
from asyncbackup.cli.operate import operate
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
from asyncbackup.engine import BackupEngine
from asyncbackup.errors import BackupError, BackupFailed, ConfigError
from asyncbackup.exposition import check_pushgateway_url, push, serving
from asyncbackup.locks import LockSettings
from asyncbackup.metrics import Metrics
from asyncbackup.progress import BarProgress, LogProgress, NoProgress
from asyncbackup.storage import Storage

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
            store = open_store(args)
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
        result = await operate(args, engine)
    return report(args, result)


def progress_for(
    args: argparse.Namespace, *, interactive: bool
) -> BarProgress | LogProgress | NoProgress:
    """A bar on a terminal, log lines otherwise; nothing for commands that move no file data
    (an empty byte bar beside ``list`` or ``prune`` would only say nothing is happening)."""
    if args.command not in MOVES_DATA and not getattr(args, "deep", False):
        return NoProgress()
    return BarProgress(args.command) if interactive else LogProgress(args.command)
