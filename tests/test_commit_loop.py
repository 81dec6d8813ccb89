"""``commit`` keeps the event loop free: a shard record's entries are parsed, and every check
over the records' entries runs, in bounded worker-thread trips with the loop running between
them (as ``manifest_reader`` reads a MANIFEST). Deterministic, not timed: the work done per
trip is counted, and a ticker task on the loop shows that it ran between one trip and the next.

The commits here run on the in-memory store: what is tested is where the work runs, not a
store (the shard commits on real stores are in test_shards.py and test_shards_gcs.py).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from asyncbackup import (
    BackupEngine,
    FileEntry,
    Manifest,
    MemoryStorage,
    freeing,
    manifest_checks,
    manifest_reader,
    shard_merge,
    threads,
)
from asyncbackup import packs as packs_module
from asyncbackup import shards as shards_module
from asyncbackup.chunking import sha256_hex
from asyncbackup.layout import chunk_key, index_key, manifest_key, pack_key, shard_key
from asyncbackup.manifest import PACKED_FORMAT_VERSION
from asyncbackup.manifest_checks import TreeCheck
from asyncbackup.manifest_reader import CHECKS_PER_TRIP, LINES_PER_TRIP
from asyncbackup.packs import INDEX_LINE_CHUNKS, PackIndex, Place
from asyncbackup.shard_records import encode_record, read_record
from asyncbackup.shards import shard_of
from tests.conftest import RecordingSleep, fast_config

SHARDS = 2
ENTRIES = 3000  # each shard's record then holds several trips' worth of every kind
LIMITS = {  # units of work per worker-thread trip, by kind
    "parse_entry": LINES_PER_TRIP,  # a MANIFEST entry parsed (and counted)
    "shard_of": LINES_PER_TRIP,  # a path hashed to its shard
    "INDEX place": INDEX_LINE_CHUNKS,  # one line of an INDEX part
    "PackIndex.add": INDEX_LINE_CHUNKS,  # a place taken, as read or as merged
    "tree check": CHECKS_PER_TRIP,  # an entry's place in the merged tree
}


def ref(path: str) -> str:
    """A chunk of its own for each file."""
    return sha256_hex(path.encode())


def shard_manifest(index: int, *, paths: list[str]) -> Manifest:
    entries = tuple(
        FileEntry(
            path=p, type="file", mode=0o644, mtime_ns=1, size=1, sha256=ref(p), chunks=(ref(p),)
        )
        for p in paths
        if shard_of(p, SHARDS) == index
    )
    return Manifest(
        name="big",
        job_id=f"job-{index}",
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:01+00:00",
        host="(shards)",
        source="/src",
        chunk_size=4,
        entries=entries,
        format_version=PACKED_FORMAT_VERSION,
    )


def places_of(manifest: Manifest, index: int) -> PackIndex:
    """Every chunk of ``manifest`` packed: a pack (of a made-up id) per 700 chunks."""
    places = PackIndex()
    for n, entry in enumerate(manifest.entries):
        pack = sha256_hex(f"pack {index} {n // 700}".encode())
        places.add(entry.chunks[0], Place(pack, (n % 700) * 10, 10), 700 * 10 + 100)
    return places


def store_with_records(
    paths: list[str], *, packed: bool = True
) -> tuple[MemoryStorage, list[Manifest]]:
    """A store holding the records of backup 'big' in ``SHARDS`` shards and the packs they
    place chunks in (or, not ``packed``, each chunk's object), as the shards would have left
    them (the packs' and chunks' bytes are not read)."""
    store = MemoryStorage()
    manifests = [shard_manifest(i, paths=paths) for i in range(SHARDS)]
    for index, manifest in enumerate(manifests):
        places = places_of(manifest, index) if packed else PackIndex()
        for entry in () if packed else manifest.entries:
            store.objects[chunk_key(entry.chunks[0])] = b"a chunk"
        record = encode_record(
            manifest, index=index, count=SHARDS, options={"chunk_size": 4}, worker="",
            written="t", places=places,
        )  # fmt: skip
        store.objects[shard_key("big", index)] = record
        for pack in places.pack_sizes:
            store.objects[pack_key(pack)] = b"a pack"
    return store, manifests


@dataclass
class Trips:
    """Every worker-thread trip of the code under test: the task that made it, the ticker's
    count when it started, and the units of per-entry work it did."""

    active: bool = False  # while the code under test runs
    ticks: int = 0
    trips: list[tuple[object, int, Counter[str]]] = field(default_factory=list)
    local: threading.local = field(default_factory=threading.local)
    outside: list[str] = field(default_factory=list)  # units done on the loop's thread

    def unit(self, what: str) -> None:
        """One entry's work was done here: it must be inside a trip, never on the loop."""
        if not self.active:  # the test's own work, before or after
            return
        if threading.current_thread() is threading.main_thread():
            self.outside.append(what)
        elif hasattr(self.local, "units"):
            self.local.units[what] += 1
        else:
            self.outside.append(f"{what} (in a thread, not in a counted trip)")

    def over_limit(self) -> list[tuple[str, int]]:
        """Each kind of unit a trip did more of than ``LIMITS`` allows, and how many."""
        return [(what, n) for _, _, units in self.trips for what, n in units.items()
                if n > LIMITS[what]]  # fmt: skip

    def total(self, what: str) -> int:
        return sum(units[what] for _, _, units in self.trips)

    def loop_ran_between_trips(self) -> bool:
        """Each task's trips started at increasing ticks: the ticker ran between them."""
        starts: dict[object, list[int]] = defaultdict(list)
        for task, started, _ in self.trips:
            starts[task].append(started)
        return all(all(a < b for a, b in itertools.pairwise(s)) for s in starts.values())


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    """Every ``to_thread`` of the package recorded as a trip; each path hashed to its shard,
    and each MANIFEST entry parsed, counted as one unit of work; a ticker on the loop."""
    seen = Trips()
    real_to_thread = threads.to_thread

    async def recording_to_thread(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = seen.ticks

        def counted() -> tuple[Any, Counter[str]]:
            seen.local.units = Counter()
            try:
                return call(*args, **kwargs), seen.local.units
            finally:
                del seen.local.units

        result, units = await real_to_thread(counted)
        seen.trips.append((asyncio.current_task(), started, units))
        return result

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("asyncbackup") and getattr(module, "to_thread", None) is real_to_thread:
            monkeypatch.setattr(module, "to_thread", recording_to_thread)
    real_parse, real_shard_of = manifest_checks.parse_entry, shards_module.shard_of

    def counting_parse(*args: Any) -> FileEntry:
        seen.unit("parse_entry")
        return real_parse(*args)

    def counting_shard_of(path: str, count: int) -> int:
        seen.unit("shard_of")
        return real_shard_of(path, count)

    def counting_entry(item: Any, fields: int) -> tuple[Any, ...]:
        seen.unit("INDEX place")
        return real_entry(item, fields)

    def counting_add(index: PackIndex, ref: str, place: Place, pack_size: int) -> None:
        seen.unit("PackIndex.add")
        real_add(index, ref, place, pack_size)

    def counting_check(tree: TreeCheck, entries: Iterable[FileEntry]) -> None:
        entries = list(entries)
        for _ in entries:
            seen.unit("tree check")
        real_check(tree, entries)

    real_entry, real_add, real_check = packs_module._entry, PackIndex.add, TreeCheck.check
    monkeypatch.setattr(TreeCheck, "check", counting_check)
    monkeypatch.setattr(manifest_reader, "parse_entry", counting_parse)
    monkeypatch.setattr(shard_merge, "shard_of", counting_shard_of)
    monkeypatch.setattr(packs_module, "_entry", counting_entry)
    monkeypatch.setattr(PackIndex, "add", counting_add)
    yield seen


async def ticking(seen: Trips, work: Any) -> Any:
    """Await ``work`` with a ticker task counting its turns on the loop meanwhile."""
    stop = False

    async def ticker() -> None:
        while not stop:
            seen.ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    seen.active = True
    try:
        return await work
    finally:
        seen.active = False
        stop = True
        await task


async def test_a_large_shard_record_is_parsed_in_bounded_trips_with_the_loop_free_between(
    trips: Trips, sleep: RecordingSleep
) -> None:
    """A single thread call for the whole record (as before) parses every entry in one trip."""
    paths = [f"f{i:05d}" for i in range(2 * ENTRIES)]
    store, manifests = store_with_records(paths)
    repo = BackupEngine(store, fast_config(), sleep=sleep)._repository("commit")
    record = await ticking(trips, read_record(repo, "big", 0))
    assert record is not None and record.manifest == manifests[0]
    assert record.places.places == places_of(manifests[0], 0).places
    assert len(record.manifest.entries) > 2 * LINES_PER_TRIP  # several trips' worth
    assert trips.outside == []
    assert trips.total("parse_entry") == trips.total("INDEX place") == len(record.manifest.entries)
    assert trips.over_limit() == []
    assert trips.loop_ran_between_trips()


async def test_a_commit_of_large_records_works_in_bounded_trips_with_the_loop_free_between(
    trips: Trips, sleep: RecordingSleep
) -> None:
    """The whole commit: no path is hashed to its shard, nor any entry parsed, on the loop's
    thread (the shard check ran there before) or in an unbounded trip (the records' parse and
    the merged MANIFEST's parse-back did)."""
    paths = [f"f{i:05d}" for i in range(ENTRIES)]
    store, _ = store_with_records(paths)
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    summary = await ticking(trips, engine.commit("big", shards=SHARDS))
    assert trips.outside == []
    for what in ("parse_entry", "INDEX place", "shard_of"):  # each entry parsed, placed, hashed
        assert trips.total(what) == ENTRIES, what
    assert trips.total("tree check") >= ENTRIES  # in each record, then merged
    assert trips.total("PackIndex.add") >= 2 * ENTRIES  # read, then merged
    assert trips.over_limit() == []
    assert trips.loop_ran_between_trips()
    assert summary.files == ENTRIES and summary.shards == SHARDS
    committed = Manifest.from_json(store.objects[manifest_key("big")], where="t")
    assert [e.path for e in committed.entries] == sorted(paths)
    index = PackIndex.decode(store.objects[index_key("big")], where="t", limit=2**30)
    assert set(index.places) == {ref(p) for p in paths}
    assert not any(k.startswith("shards/") for k in store.objects)  # records removed


async def test_a_commit_frees_its_records_a_part_at_a_time_with_the_loop_free_between(
    sleep: RecordingSleep,
) -> None:
    """Dropping the records of 12,000 entries at once (as the commit did when it returned), or
    the listing of 12,000 chunks, frees every entry and its strings, or every ref, in one C
    call while the loop waits. Counted, not timed: the memory blocks freed between two turns
    of a ticker on the loop, at most 10 per item drained (an entry is 6: itself, its path,
    its sha256, its chunks' tuple and ref; the rest is room for a worker thread's frees in
    the same turn). Unpacked: a packed commit's INDEX encode frees its own temporaries in
    its worker thread, during some turn. The collector is off meanwhile: what it frees of
    earlier tests' cycles is not the commit's."""
    paths = [f"f{i:05d}" for i in range(4 * ENTRIES)]
    store, _ = store_with_records(paths, packed=False)
    engine = BackupEngine(store, fast_config(), sleep=sleep)
    freed_per_turn: list[int] = []
    stop = False

    async def ticker() -> None:
        last = sys.getallocatedblocks()
        while not stop:
            await asyncio.sleep(0)
            now = sys.getallocatedblocks()
            freed_per_turn.append(last - now)
            last = now

    gc.collect()
    gc.disable()
    task = asyncio.create_task(ticker())
    try:
        summary = await engine.commit("big", shards=SHARDS)
    finally:
        stop = True
        await task
        gc.enable()
    assert summary.files == len(paths)
    assert not any(k.startswith("shards/") for k in store.objects)
    # Dropped at once as the commit returned, 12,000 entries were about 70,000 blocks
    assert max(freed_per_turn) <= 10 * freeing.FREES_PER_TURN < len(paths)
