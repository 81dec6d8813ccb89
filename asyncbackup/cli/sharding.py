"""Shards on the command line: which shard this process runs (``--shard``, ``--shards``,
``--shard-index-env``), and a backup or restore run as shards on Dask (``--dask``)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from asyncbackup.backup import default_name
from asyncbackup.backup_options import BackupOptions
from asyncbackup.cli.open_store import open_store
from asyncbackup.engine import BackupEngine
from asyncbackup.errors import ConfigError
from asyncbackup.layout import LOCKS
from asyncbackup.shards import ShardSpec, index_from_environment


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


async def run_backup_on_dask(
    args: argparse.Namespace, engine: BackupEngine, options: BackupOptions
) -> object:
    """``backup --dask``: every shard a task on the Dask cluster, then the commit (dask_run.py)."""
    from asyncbackup.dask_run import backup_on_dask

    name = args.name if args.name is not None else default_name()
    return await backup_on_dask(
        args.dask,
        count=args.shards,
        retries=args.dask_retries,
        opener=partial(open_store, args),
        config=engine.config,
        locking=engine.locking,
        options=options,
        source=args.source,
        name=name,
        progress=engine.progress,
        commit=partial(engine.commit, name, shards=args.shards),
        warm=partial(engine.store.list_page, LOCKS, None),
    )


async def restore_by_shards(
    args: argparse.Namespace, engine: BackupEngine, shard: ShardSpec | None
) -> object:
    """``restore`` with --shard, --finish or --dask: one shard, the last step, or every shard
    on the Dask cluster then the last step (restore_shards.py, dask_run.py).

    Raises:
        ConfigError: --delete, --include or --exclude (a restore by shards restores every
            file), --finish beside a shard, or --dask into a non-empty target.
    """
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
        opener=partial(open_store, args),
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
