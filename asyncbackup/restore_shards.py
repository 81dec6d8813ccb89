"""One restore made by many processes: which files each shard restores, and the last step.

A backup's MANIFEST does not change, so every shard can split its files the same way by bytes
(unlike a backup's shards, which each list a tree that may be changing): the files, largest
first, each to the shard with the fewest bytes so far (ties to the lowest index). A file's other
hard-linked names go with it. Shard ``K`` restores its files as ``restore --overwrite`` does
(a file already in place with the right size and sha256 is kept), creating the directories
they need; it removes no temporary file, since the other shards' are being written beside its
own.

When every shard is done, ``finish`` restores the rest in one process: it removes what killed
restores left, creates the empty directories and the symlinks (after every file, as a restore
always does, so no write passes through a link), sets every directory's mode and mtime (deepest
first, after the last file landed in it), and checks that every file is in place with its size.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import replace
from pathlib import Path

from asyncbackup.manifest import Manifest
from asyncbackup.shards import ShardSpec


def part_of(manifest: Manifest, shard: ShardSpec) -> Manifest:
    """The files of ``manifest`` that shard ``shard`` restores (pure: run it in a thread)."""
    files = [e for e in manifest.entries if e.type == "file"]
    leaders = sorted((e for e in files if not e.hardlink), key=lambda e: (-e.size, e.path))
    loads = [(0, index) for index in range(shard.count)]
    mine: set[str] = set()
    for entry in leaders:
        load, index = heapq.heappop(loads)
        if index == shard.index:
            mine.add(entry.path)
        heapq.heappush(loads, (load + max(entry.size, 1), index))
    taken = tuple(e for e in files if (e.hardlink or e.path) in mine)
    return replace(manifest, entries=taken)


def last_step_of(manifest: Manifest) -> Manifest:
    """What ``finish`` restores: the directories and the symlinks (pure)."""
    rest = tuple(e for e in manifest.entries if e.type in ("dir", "symlink"))
    return replace(manifest, entries=rest)


def missing_files(manifest: Manifest, target: Path) -> list[str]:
    """The files of ``manifest`` not in ``target`` with their size (blocking: run it in a
    thread): what a shard that did not run, or died, left out."""
    missing: list[str] = []
    base = os.fsencode(target)
    for entry in manifest.entries:
        if entry.type != "file":
            continue
        try:
            size = os.lstat(os.path.join(base, os.fsencode(entry.path))).st_size
        except OSError:
            size = -1
        if size != entry.size:
            missing.append(entry.path)
    return missing


def sizes_by_shard(manifest: Manifest, count: int) -> list[int]:
    """The bytes each of ``count`` shards restores (for the benchmark and the tests)."""
    return [
        sum(e.size for e in part_of(manifest, ShardSpec(k, count)).entries if not e.hardlink)
        for k in range(count)
    ]


__all__ = ["last_step_of", "missing_files", "part_of", "sizes_by_shard"]
