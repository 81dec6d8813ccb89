"""The option groups several commands share, and the parser of one command.

Each command's ``--help`` shows its own arguments and options first (the ``*_arguments.py``
modules add them), then the groups it ``offers`` (transfer, metrics), then the global options
and the testing options, which every command takes. The group titles are what
``environment.py`` and ``reference.py`` know the shared groups by.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path

from asyncbackup.cli.values import bandwidth_rate, fault_rate, parse_size
from asyncbackup.config import (
    DEFAULT_BASE_DELAY,
    DEFAULT_BUFFER_BUDGET,
    DEFAULT_MAX_MANIFEST_SIZE,
    EngineConfig,
    RetryPolicy,
)
from asyncbackup.defaults import DEFAULT_METRICS_ADDRESS, DEFAULT_PUSH_JOB

# Which commands offer the shared options that do not matter to every command. A new command
# names the groups it needs in ``add_command(..., offers=...)``; global and testing options
# come with every command.
CONCURRENCY, BWLIMIT, METRICS = "concurrency", "bwlimit", "metrics"
STORE_HELP = (
    "where the backups live: a path, file:///abs/path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX"
)


class CommandParser(argparse.ArgumentParser):
    """One command's parser; ``offers`` names the shared option groups it takes."""

    offers: Collection[str] = ()


def add_command(
    commands: argparse._SubParsersAction[CommandParser],
    name: str,
    summary: str,
    *,
    description: str,
    offers: Collection[str] = (),
) -> CommandParser:
    """A command's parser. The caller adds its own arguments and options; ``build_parser``
    then adds the shared groups it ``offers``, the global options and the testing options, in
    that order after them (in usage lines and in --help)."""
    parser = commands.add_parser(name, help=summary, description=description)
    parser._positionals.title = "arguments"
    parser._optionals.title = f"{name} options"
    parser.offers = offers
    return parser


def add_shared_options(parser: CommandParser) -> None:
    if parser.offers:
        transfers = parser.add_argument_group("transfer options")
        if CONCURRENCY in parser.offers:
            transfers.add_argument(
                "--concurrency",
                type=int,
                default=EngineConfig().concurrency,
                metavar="N",
                help="transfers in flight at once (default %(default)s)",
            )
        if BWLIMIT in parser.offers:
            transfers.add_argument(
                "--bwlimit",
                type=bandwidth_rate,
                metavar="RATE",
                help="cap chunk uploads and downloads at RATE bytes/s, e.g. 512K or 10M (MiB/s)",
            )
            # Offered with --bwlimit: both concern the commands that move chunk data.
            transfers.add_argument(
                "--buffer-budget",
                type=parse_size,
                default=DEFAULT_BUFFER_BUDGET,
                metavar="SIZE",
                help="file data held in memory at once: read ahead of uploads, fetched ahead "
                "of writes (default 128M; at least 1M)",
            )
    if METRICS in parser.offers:
        _add_metrics_options(parser.add_argument_group("metrics options"))
    _add_global_options(parser.add_argument_group("global options"))
    _add_testing_options(parser.add_argument_group("testing options"))
    positionals = " ".join(str(a.metavar) for a in parser._positionals._group_actions)
    parser.usage = f"%(prog)s [options] {positionals}"


def add_store(parser: argparse.ArgumentParser) -> None:
    """The STORE argument (from ``ASYNCBACKUP_STORE`` when it is set)."""
    parser.add_argument("store", metavar="STORE", help=STORE_HELP)


def add_name(
    parser: argparse.ArgumentParser, help: str, *, metavar: str = "NAME", dest: str = "name"
) -> None:
    """A backup's name, as list prints it."""
    parser.add_argument(dest, metavar=metavar, help=help)


def add_shard_options(parser: CommandParser, verb: str, then: str) -> None:
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


def _add_metrics_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="write Prometheus metrics here at the end (textfile collector format)",
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics while the job runs "
        "(0: a free port, logged)",
    )
    group.add_argument(
        "--metrics-address",
        default=DEFAULT_METRICS_ADDRESS,
        metavar="ADDRESS",
        help="the address --metrics-port binds (default %(default)s; 0.0.0.0 for every one)",
    )
    group.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push metrics to this Prometheus Pushgateway when the job ends, failed or not",
    )
    group.add_argument(
        "--push-job",
        default=DEFAULT_PUSH_JOB,
        metavar="NAME",
        help="the job label of the push (default %(default)s); grouped by instance and command",
    )


def _add_global_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-retries",
        type=int,
        default=RetryPolicy().max_attempts - 1,
        metavar="N",
        help="retries per transfer after its first attempt (default %(default)s)",
    )
    group.add_argument(
        "--retry-delay",
        type=float,
        default=DEFAULT_BASE_DELAY,
        metavar="SECONDS",
        help="first backoff ceiling (default %(default)s), doubling up to 20 s",
    )
    group.add_argument(
        "--attempt-timeout",
        type=float,
        default=RetryPolicy().attempt_timeout,
        metavar="SECONDS",
        help="how long one attempt may take (default %(default)s)",
    )
    group.add_argument(
        "--retry-budget",
        type=int,
        default=RetryPolicy().budget,
        metavar="N",
        help="retries the whole job may spend (default %(default)s)",
    )
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)",
    )
    group.add_argument("--region", help="S3 region (default: $AWS_REGION or $AWS_DEFAULT_REGION)")
    group.add_argument(
        "--addressing-style",
        choices=("auto", "path", "virtual"),
        default="auto",
        help="S3 bucket addressing (default %(default)s; path for most S3-compatible servers)",
    )
    group.add_argument(
        "--max-manifest-size",
        type=parse_size,
        default=DEFAULT_MAX_MANIFEST_SIZE,
        metavar="SIZE",
        help="refuse to read a MANIFEST larger than this (default 256M: about a million files)",
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log every file and every step")
    group.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")


def _add_testing_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--inject-faults",
        type=fault_rate,
        default=0.0,
        metavar="RATE",
        help="make RATE (0 to 1) of store operations fail transiently",
    )
    group.add_argument(
        "--inject-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="add MS milliseconds to every store operation",
    )
    group.add_argument(
        "--fault-seed", type=int, default=0, metavar="N", help="seed of --inject-faults"
    )
