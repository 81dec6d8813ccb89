"""The INDEX of a sharded backup: the shard records' INDEX parts merged, and checked.

Each shard record carries the places of the packed chunks its shard names (packs it wrote, or
reused from its parent's INDEX). ``commit`` merges them into the backup's one INDEX:

* A ref placed by two records at different places (two shards packed the same content, each in
  its own pack) keeps the place of the lowest shard index: deterministic, so a re-run commit
  writes the same INDEX; either place holds the same bytes, since a ref names its content.
* A pack two records give different sizes is refused: one record was edited or damaged.
* Every pack the merged INDEX names must be in a listing of ``packs/`` (as every chunk object
  must be in a listing of ``chunks/``): one missing refuses the commit, naming it and the shard.

Blocking loops over every place: callers run them in a worker thread.
"""

from __future__ import annotations

from asyncbackup.errors import FailedItem, ManifestError
from asyncbackup.layout import pack_key
from asyncbackup.packs import PackIndex
from asyncbackup.shard_records import ShardRecord


def merge_places(records: list[ShardRecord]) -> tuple[PackIndex, list[FailedItem]]:
    """The merged INDEX of ``records`` (ordered by shard index), and the conflicts that make
    it untrustworthy (an empty list when there are none)."""
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
        for ref, place in part.places.items():
            if ref not in merged.places:  # the lowest shard's place wins
                merged.add(ref, place, part.pack_sizes[place.pack])
                sized_by.setdefault(place.pack, record.index)
    return merged, problems


def unlisted_packs(
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
