"""One command's work: from its parsed arguments to the engine call that does it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from asyncbackup.backup_options import BackupOptions, ChangeDetection, check_tag
from asyncbackup.cli.sharding import restore_by_shards, run_backup_on_dask, shard_of_args
from asyncbackup.engine import BackupEngine, Filters
from asyncbackup.errors import ConfigError
from asyncbackup.excludes import ExcludeOptions
from asyncbackup.packuse import RepackPolicy
from asyncbackup.patterns import read_pattern_files
from asyncbackup.retention import RetentionPolicy
from asyncbackup.stream import DEFAULT_STDIN_NAME, command_output, read_stdin


async def operate(args: argparse.Namespace, engine: BackupEngine) -> object:
    """Run the command ``args`` names on ``engine``; its result is what ``report`` prints.

    Raises:
        ConfigError: options that do not go together (--stdin-name without SOURCE '-', shards
            of standard input, a sharded backup without --name...).
    """
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
            return await run_backup_on_dask(args, engine, options)
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
            return await restore_by_shards(args, engine, shard)
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
