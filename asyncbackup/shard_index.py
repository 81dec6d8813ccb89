"""The INDEX of a sharded backup, and the check that every chunk a sharded backup names is
stored.

Each shard record carries the places of the packed chunks its shard names (packs it wrote, or
reused from its parent's INDEX). ``commit`` merges them into the backup's one INDEX:

* A ref placed by two records at different places (two shards packed the same content, each in
  its own pack) keeps the place of the lowest shard index: deterministic, so a re-run commit
  writes the same INDEX; either place holds the same bytes, since a ref names its content.
* A pack two records give different sizes is refused: one record was edited or damaged.

A chunk a record names is stored when the merged INDEX places it in a pack that a listing of
``packs/`` shows, or else when a listing of ``chunks/`` shows its object (``unstored``): one
missing refuses the commit, naming it and the shard.

Loops over every place or entry run ``CHECKS_PER_TRIP`` items per worker-thread trip, the
event loop free between them (``threads.in_trips``).
"""

from __future__ import annotations

from collections.abc import Sequence

from asyncbackup.errors import FailedItem, ManifestError
from asyncbackup.freeing import drain
from asyncbackup.layout import pack_key
from asyncbackup.manifest import FileEntry
from asyncbackup.manifest_reader import CHECKS_PER_TRIP
from asyncbackup.packs import PackIndex, Place
from asyncbackup.repository import Repository
from asyncbackup.shard_records import ShardRecord
from asyncbackup.threads import in_trips


async def merge_places(records: list[ShardRecord]) -> tuple[PackIndex, list[FailedItem]]:
    """The merged INDEX of ``records``, and the conflicts that make it untrustworthy (an empty
    list when there are none)."""
    merged = PackIndex()
    sized_by: dict[str, int] = {}  # pack -> the shard that first gave its size
    problems: list[FailedItem] = []
    for record in sorted(records, key=lambda r: r.index):
        part = record.places
        for pack_id, size in sorted(part.pack_sizes.items()):
            known = merged.pack_sizes.get(pack_id)
            if known is not None and known != size:
                why = (
                    f"it says {pack_key(pack_id)} is {size} bytes, shard {sized_by[pack_id]} "
                    f"says {known}: the record was edited or damaged ({record.where})"
                )
                problems.append(FailedItem(record.key, ManifestError(why)))
        if problems:
            continue

        def take(places: Sequence[tuple[str, Place]], record: ShardRecord = record) -> bool:
            sizes = record.places.pack_sizes
            for ref, place in places:
                if ref not in merged.places:  # the lowest shard's place wins
                    merged.add(ref, place, sizes[place.pack])
                    sized_by.setdefault(place.pack, record.index)
            return False

        await in_trips(take, list(part.places.items()), per_trip=CHECKS_PER_TRIP)
    return merged, problems


async def unstored(
    repo: Repository, records: list[ShardRecord], places: PackIndex
) -> list[FailedItem]:
    """What makes the backup of ``records`` not restorable: a problem for each record that names
    a chunk which is neither placed by ``places`` (the merged INDEX) nor in a listing of
    ``chunks/``, and one for each pack ``places`` names that a listing of ``packs/`` lacks.
    An empty list when every chunk is stored."""
    stored = await repo.stored_refs()
    lost: list[FailedItem] = []
    for record in records:

        def missing(entries: Sequence[FileEntry], record: ShardRecord = record) -> bool:
            for entry in entries:
                absent = [ref for ref in entry.chunks if ref not in stored and ref not in places]
                if absent:
                    why = (f"chunk {absent[0]} of {entry.path!r} (shard {record.index}, "
                           f"{record.where}) is not in the store")  # fmt: skip
                    lost.append(FailedItem(record.key, ManifestError(why)))
                    return True
            return False

        await in_trips(missing, record.manifest.entries, per_trip=CHECKS_PER_TRIP)
    await drain(stored)  # a listing of every chunk in the store: freed a part at a time
    if places:
        lost += _unlisted_packs(records, places, await repo.pack_ids())
    return lost


def _unlisted_packs(
    records: list[ShardRecord], merged: PackIndex, listed: set[str]
) -> list[FailedItem]:
    """A problem for each pack the merged INDEX places a chunk in that the listing of
    ``packs/`` (``listed``) lacks, naming the shard whose record gave it: that backup would not
    restore."""
    lost: list[FailedItem] = []
    for pack_id in sorted(set(merged.pack_sizes) - listed):
        record = min((r for r in records if pack_id in r.places.pack_sizes), key=lambda r: r.index)
        why = (
            f"{pack_key(pack_id)}, in which shard {record.index} ({record.where}) placed "
            "packed chunks, is not in the store"
        )
        lost.append(FailedItem(record.key, ManifestError(why)))
    return lost
