"""How long the event loop waits while ``commit`` reads and merges the shard records of a large
sharded backup: the records read and checked in bounded worker-thread trips, as ``commit``
does now (``shard_records.decode_record``, ``shard_merge``), against the same work done as it
was before (each record parsed in one worker-thread call, the paths hashed to their shards on
the loop, the merged MANIFEST encoded and parsed back in one more call).

A probe task asks for a 1 ms sleep in a loop; a stall is how late it wakes. The full garbage
collections' pauses are recorded too: they hold the GIL whatever thread triggers them.
Interleaved: each round runs each way once, in turn, after a full garbage collection.

    python -m benchmarks.commit_stall --entries 100000 --shards 4 --rounds 3

Results go to benchmarks/results/commit_stall.json; docs/benchmarks.md reports them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from asyncbackup.chunking import sha256_hex
from asyncbackup.commit import release
from asyncbackup.layout import manifest_key
from asyncbackup.manifest import PACKED_FORMAT_VERSION, FileEntry, Manifest
from asyncbackup.packs import PackIndex, Place
from asyncbackup.shard_index import merge_places
from asyncbackup.shard_merge import inconsistencies, merged
from asyncbackup.shard_records import ShardRecord, decode_record, encode_record, split_record
from asyncbackup.shards import shard_of
from benchmarks.loop_stall import interleaved

RESULTS = Path(__file__).parent / "results" / "commit_stall.json"
PER_PACK = 1000


def records(entries: int, shards: int) -> list[bytes]:
    """The records of a backup 'big' of ``entries`` small files in ``shards`` shards, each
    file's one chunk packed."""
    paths = [f"d{i // 1000}/f{i}" for i in range(entries)]
    out: list[bytes] = []
    for index in range(shards):
        mine = sorted(p for p in paths if shard_of(p, shards) == index)
        files = tuple(
            FileEntry(path=p, type="file", mode=0o644, mtime_ns=i, size=100, sha256=ref,
                      chunks=(ref,), ctime_ns=i, inode=i)
            for i, p in enumerate(mine) for ref in [sha256_hex(p.encode())]
        )  # fmt: skip
        dirs = tuple(
            FileEntry(path=d, type="dir", mode=0o755, mtime_ns=1)
            for d in sorted({p.rsplit("/", 1)[0] for p in mine})
            if shard_of(d, shards) == index
        )
        manifest = Manifest(
            name="big", job_id=f"j{index}", started="s", finished="f", host="(shards)",
            source="/src", chunk_size=8 << 20,
            entries=tuple(sorted(files + dirs, key=lambda e: e.path)),
            format_version=PACKED_FORMAT_VERSION,
        )  # fmt: skip
        places = PackIndex()
        for n, entry in enumerate(files):
            pack = sha256_hex(f"{index}/{n // PER_PACK}".encode())
            places.add(entry.chunks[0], Place(pack, (n % PER_PACK) * 100, 100), PER_PACK * 100 + 8)
        out.append(
            encode_record(manifest, index=index, count=shards, options={}, worker="",
                          written="w", places=places)
        )  # fmt: skip
    return out


async def in_trips(data: list[bytes], shards: int) -> None:
    """What ``commit`` does now with the records, up to the store checks, and their free."""
    parsed = [
        await decode_record(d, key=f"shards/big/{i}.record", limit=1 << 31)
        for i, d in enumerate(data)
    ]
    assert not await inconsistencies("big", shards, parsed)
    places, conflicts = await merge_places(parsed)
    assert not conflicts and places
    await merged("big", parsed, packed=True)
    del places  # then, as commit does, the records are freed a part at a time
    await release(parsed)


def _old_decode(data: bytes, key: str) -> ShardRecord:
    head, entries_part, index_part = split_record(data, key=key)
    return ShardRecord(
        key=key, index=head["index"], count=head["count"], host=head["host"], pid=head["pid"],
        worker=head["worker"], options=head["options"], written=head["written"],
        manifest=Manifest.from_json(entries_part, where=key, limit=1 << 31),
        places=PackIndex.decode(index_part, where=key, limit=1 << 31),
    )  # fmt: skip


def _old_merge(parsed: list[ShardRecord]) -> Manifest:
    entries = sorted((e for r in parsed for e in r.manifest.entries), key=lambda e: e.path)
    first = parsed[0].manifest
    manifest = Manifest(
        name="big", job_id="j", started=first.started, finished=first.finished,
        host=first.host, source=first.source, chunk_size=first.chunk_size,
        entries=tuple(entries), format_version=PACKED_FORMAT_VERSION,
    )  # fmt: skip
    return Manifest.from_json(manifest.to_bytes(), where=manifest_key("big"))


def _old_places(parsed: list[ShardRecord]) -> PackIndex:
    merged_places = PackIndex()
    for record in parsed:
        for ref, place in record.places.places.items():
            if ref not in merged_places.places:
                merged_places.add(ref, place, record.places.pack_sizes[place.pack])
    return merged_places


async def one_call_each(data: list[bytes], shards: int) -> None:
    """The same work as the commit did it before: a thread call per record, the shard check on
    the loop, the INDEX merge and the merged MANIFEST's parse-back one thread call each."""
    parsed = [
        await asyncio.to_thread(_old_decode, d, f"shards/big/{i}.record")
        for i, d in enumerate(data)
    ]
    for record in parsed:
        for entry in record.manifest.entries:
            assert shard_of(entry.path, shards) == record.index
    await asyncio.to_thread(_old_places, parsed)
    await asyncio.to_thread(_old_merge, parsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = records(args.entries, args.shards)
    kinds = {
        "trips": lambda: in_trips(data, args.shards),
        "one_call_each": lambda: one_call_each(data, args.shards),
    }
    summary: dict[str, Any] = {
        "entries": args.entries, "shards": args.shards, "rounds": args.rounds,
        "record_mib": round(sum(map(len, data)) / (1 << 20), 1),
    }  # fmt: skip
    summary.update(interleaved(kinds, args.rounds))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
