"""What ``commit`` makes of a backup's shard records: the checks that they are one backup, and
the one MANIFEST merged from them.

Every loop over the entries runs in bounded worker-thread trips with the event loop free
between them (``threads.in_trips``), as ``manifest_reader`` parses a MANIFEST: the shard of
each path (``LINES_PER_TRIP`` per trip), and the merge of the records' sorted entries, the
tree checks and the totals (``CHECKS_PER_TRIP`` per trip). A record of 100,000 entries never
holds the GIL, hence the loop, for longer than a trip.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Sequence
from itertools import islice

from asyncbackup.errors import BackupFailed, FailedItem, ManifestError
from asyncbackup.layout import manifest_key, shard_key
from asyncbackup.manifest import (
    FORMAT_VERSION,
    PACKED_FORMAT_VERSION,
    FileEntry,
    Manifest,
    Tally,
)
from asyncbackup.manifest_checks import TreeCheck
from asyncbackup.manifest_reader import CHECKS_PER_TRIP, LINES_PER_TRIP
from asyncbackup.shard_records import ShardRecord
from asyncbackup.shards import SHARDED_HOST, shard_of
from asyncbackup.threads import in_trips

OPERATION = "commit"


async def inconsistencies(name: str, count: int, records: list[ShardRecord]) -> list[FailedItem]:
    """What makes the records not one backup: a list of problems, empty when they agree."""
    problems: list[FailedItem] = []
    if not records:
        return problems
    first = records[0]

    def refuse(record: ShardRecord, why: str) -> None:
        problems.append(FailedItem(record.key, ManifestError(f"{why} ({record.where})")))

    seen: dict[str, int] = {}
    for record in records:
        m = record.manifest
        if m.name != name or record.count != count or record.key != shard_key(name, record.index):
            refuse(record, f"it is shard {record.index}/{record.count} of backup {m.name!r}, "
                   f"not a shard of {name!r} in {count}")  # fmt: skip
            continue
        if m.source != first.manifest.source:
            refuse(record, f"its source {m.source} differs from shard {first.index}'s "
                   f"{first.manifest.source}")  # fmt: skip
        if record.options != first.options:
            differ = sorted(
                k for k in {*record.options, *first.options}
                if record.options.get(k) != first.options.get(k)
            )  # fmt: skip
            refuse(record, f"its options differ from shard {first.index}'s: {', '.join(differ)}")

        def misplaced(entries: Sequence[FileEntry], record: ShardRecord = record) -> bool:
            for entry in entries:
                owner = shard_of(entry.path, count)
                if owner != record.index:
                    why = f"it holds {entry.path!r}, which belongs to shard {owner}"
                    refuse(record, f"{why}: the record was edited or damaged")
                    return True
                if entry.path in seen:
                    refuse(record, f"{entry.path!r} is in shard {seen[entry.path]} too")
                    return True
                seen[entry.path] = record.index
            return False

        await in_trips(misplaced, m.entries, per_trip=LINES_PER_TRIP)
    return problems


async def merged(name: str, records: list[ShardRecord], *, packed: bool) -> Manifest:
    """One MANIFEST from the records, its tree checked as a restore's parse checks it
    (``TreeCheck``), so a merged tree that is not valid (a path beneath a link of another
    shard, a hard link to another shard's file) is refused here, not at restore time. Each
    entry and head was parsed and checked when its record was read; the tree is what merging
    can break.

    Raises:
        BackupFailed: the merged tree is not valid.
    """
    first = records[0].manifest
    # Each record's entries are sorted by path: merged a trip's worth at a time.
    runs = heapq.merge(*(r.manifest.entries for r in records), key=_path_of)
    total = sum(len(r.manifest.entries) for r in records)
    entries: list[FileEntry] = []
    tree, tally = TreeCheck(), Tally()

    def take(batch: Sequence[int]) -> bool:
        part = list(islice(runs, len(batch)))
        tree.add(part)  # Raises: a path twice
        tally.add(part)
        entries.extend(part)
        return False

    def check(batch: Sequence[FileEntry]) -> bool:
        tree.check(batch)
        return False

    try:
        await in_trips(take, range(total), per_trip=CHECKS_PER_TRIP)
        await in_trips(check, entries, per_trip=CHECKS_PER_TRIP)
    except ManifestError as exc:
        where = manifest_key(name)
        raise BackupFailed(
            OPERATION, [FailedItem(where, ManifestError(f"{where}: {exc}"))]
        ) from exc
    parents = {r.manifest.parent for r in records}
    return Manifest(
        name=name,
        job_id=job_id(records),
        started=min(r.manifest.started for r in records),
        finished=max(r.manifest.finished for r in records),
        host=SHARDED_HOST,
        source=first.source,
        chunk_size=first.chunk_size,
        entries=tuple(entries),
        compression=first.compression,
        warnings=tuple(
            sorted((w for r in records for w in r.manifest.warnings), key=lambda w: w.path)
        ),
        excludes=first.excludes,
        tags=first.tags,
        parent=parents.pop() if len(parents) == 1 else "",
        format_version=PACKED_FORMAT_VERSION if packed else FORMAT_VERSION,
        counted=tally.totals(),
    )


def job_id(records: list[ShardRecord]) -> str:
    """The MANIFEST's job id: the same for the same records, so a re-run commit knows its own."""
    joined = "\n".join(f"{r.index}:{r.manifest.job_id}" for r in records)
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def by_path(into: dict[str, FileEntry]) -> Callable[[Sequence[FileEntry]], bool]:
    """A trip's work that files entries into ``into`` by path."""

    def add(entries: Sequence[FileEntry]) -> bool:
        into.update((e.path, e) for e in entries)
        return False

    return add


def _path_of(entry: FileEntry) -> str:
    return entry.path
