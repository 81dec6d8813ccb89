"""The MANIFEST round-trips, and a hostile or broken one is refused before anything is written."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from typing import Any

import pytest

from asyncbackup import (
    FileEntry,
    Manifest,
    ManifestError,
    manifest_checks,
    manifest_encoding,
    manifest_reader,
    threads,
)
from asyncbackup.manifest import Tally
from asyncbackup.manifest_checks import TreeCheck
from asyncbackup.manifest_reader import CHECKS_PER_TRIP, LINES_PER_TRIP, read_manifest

D1, D2 = "a" * 64, "b" * 64


def manifest(*entries: FileEntry) -> Manifest:
    return Manifest(
        name="n",
        job_id="j",
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:01+00:00",
        host="h",
        source="/src",
        chunk_size=4,
        entries=entries,
    )


def good() -> Manifest:
    return manifest(
        FileEntry("d", "dir", 0o755, 1),
        FileEntry("d/f", "file", 0o644, 2, size=6, sha256=D1, chunks=(D1, D2)),
        FileEntry("d/\udcff-not-utf8", "file", 0o600, 3, size=0, sha256=D2),
        FileEntry("l", "symlink", 0o777, 4, target="d/f"),
    )


def test_round_trip_keeps_every_field_and_counts_totals() -> None:
    original = good()
    data = original.to_json()
    data.decode("ascii")  # non-UTF-8 names travel as escapes
    again = Manifest.from_json(data, where="test")
    assert again == original
    assert again.totals.files == 2 and again.totals.bytes == 6 and again.totals.unique_chunks == 2
    assert json.loads(data)["totals"]["symlinks"] == 1


def edited(change: Any) -> bytes:
    doc = json.loads(good().to_json())
    change(doc)
    return json.dumps(doc).encode()


def set_path(index: int, path: str) -> Any:
    return lambda doc: doc["entries"][index].__setitem__("path", path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (edited(lambda d: d.__setitem__("format_version", 99)), "format_version 99"),
        (edited(set_path(1, "../outside")), "unsafe path '../outside'"),
        (edited(set_path(1, "/etc/passwd")), "unsafe path '/etc/passwd'"),
        (edited(set_path(1, "d/../../x")), "unsafe path"),
        (edited(set_path(1, "d//f")), "unsafe path"),
        (edited(set_path(1, "")), "unsafe path"),
        (edited(set_path(1, "l/evil")), "beneath 'l', which is a symlink"),
        (edited(set_path(3, "d")), "'d' appears twice"),
        (edited(lambda d: d["entries"][1].__setitem__("chunks", [D1])), "1 chunks cannot hold 6"),
        (edited(lambda d: d["entries"][1].__setitem__("sha256", "xyz")), "bad size or sha256"),
        (edited(lambda d: d["entries"][1].__setitem__("mode", 0o10000)), "out of range"),
        (edited(lambda d: d["entries"][0].__setitem__("type", "fifo")), "unknown entry type"),
        (edited(lambda d: d["entries"][1].pop("size")), "malformed"),
    ],
)
def test_bad_manifests_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data, where="store/backups/n/MANIFEST")


def by_line(data: bytes) -> bytes:
    """The document ``data`` laid out as a backup writes it: its head on the first line, one
    entry per line, in two zstd frames (what ``manifest_reader`` parses in pieces)."""
    doc = json.loads(data)
    entries = doc.pop("entries")
    head = json.dumps(doc, separators=(",", ":"))[:-1] + ',"entries":[\n'
    lines = ",\n".join(json.dumps(e, separators=(",", ":")) for e in entries) + "\n]}\n"
    return manifest_encoding.encode(head.encode(), lines.encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (by_line(edited(set_path(1, "../outside"))), "unsafe path '../outside'"),
        (by_line(edited(set_path(1, "l/evil"))), "beneath 'l', which is a symlink"),
        (by_line(edited(set_path(3, "d"))), "'d' appears twice"),
        (by_line(edited(lambda d: d["entries"][1].pop("size"))), "malformed"),
        (by_line(edited(lambda d: d.__setitem__("format_version", 99))), "format_version 99"),
        (good().to_bytes()[:-8], "compressed data is damaged|ends before its entries do"),
        (good().to_json()[:-4], "ends before its entries do"),
        (good().to_json() + b"{}\n", "more after the end of the entries"),
        (good().to_json().replace(b",\n", b"\n", 1), "not valid JSON|not separated by commas"),
        (good().to_json().replace(b'"type":"file"', b'"type":"file"}{', 1), "not valid JSON"),
    ],
)
def test_bad_manifests_laid_out_by_line_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        Manifest.from_json(data, where="store/backups/n/MANIFEST")
    assert str(caught.value).startswith("store/backups/n/MANIFEST: ")


def many(count: int) -> Manifest:
    return manifest(
        *(
            FileEntry(f"f{i}", "file", 0o644, i, size=1, sha256=D1, chunks=(D1,))
            for i in range(count)
        )
    )


@pytest.mark.parametrize("count", [0, 1, LINES_PER_TRIP - 1, LINES_PER_TRIP, LINES_PER_TRIP + 1])
async def test_a_manifest_round_trips_whatever_its_length_against_the_batches(count: int) -> None:
    original = many(count)
    assert await read_manifest(original.to_bytes(), where="t") == original
    assert Manifest.from_json(original.to_json(), where="t") == original


async def test_a_large_manifest_is_parsed_in_bounded_trips_with_the_loop_free_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic, not timed: each worker-thread trip parses at most ``LINES_PER_TRIP``
    entries, and other tasks run on the loop between one trip and the next (a single thread
    call for the whole MANIFEST, as before, fails both)."""
    count = 3 * LINES_PER_TRIP + 10
    original = many(count)
    parsed = 0
    real_parse = manifest_checks.parse_entry

    def counting_parse(*args: Any) -> FileEntry:
        nonlocal parsed
        parsed += 1
        return real_parse(*args)

    ticks = 0
    trips: list[tuple[int, int]] = []  # (ticks when the trip started, entries it parsed)
    real_to_thread = threads.to_thread

    async def recording_to_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
        before = parsed
        started = ticks
        result = await real_to_thread(call, *args, **kwargs)
        trips.append((started, parsed - before))
        return result

    monkeypatch.setattr(manifest_reader, "parse_entry", counting_parse)
    monkeypatch.setattr(manifest_reader, "to_thread", recording_to_thread)
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        assert await read_manifest(original.to_bytes(), where="t") == original
    finally:
        stop = True
        await task
    assert parsed == count
    assert max(n for _, n in trips) <= LINES_PER_TRIP
    assert len([n for _, n in trips if n]) >= count // LINES_PER_TRIP
    starts = [t for t, _ in trips]
    assert all(a < b for a, b in itertools.pairwise(starts))  # the loop ran between trips


async def test_the_tree_of_a_large_manifest_is_checked_and_counted_in_bounded_trips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks of the whole tree and the count of the totals touch a bounded number of
    entries per worker-thread trip too (a last trip that checks or counts every entry, as
    before, fails this), and each entry is added, counted and checked exactly once."""
    count = 2 * CHECKS_PER_TRIP + 10
    original = many(count)
    touched = 0
    per_trip: list[int] = []

    def counting(real: Any) -> Any:
        def call(self: Any, entries: Any) -> None:
            nonlocal touched
            entries = list(entries)
            touched += len(entries)
            real(self, entries)

        return call

    real_to_thread = threads.to_thread

    async def recording_to_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
        before = touched
        result = await real_to_thread(call, *args, **kwargs)
        per_trip.append(touched - before)
        return result

    for cls, method in ((TreeCheck, "add"), (TreeCheck, "check"), (Tally, "add")):
        monkeypatch.setattr(cls, method, counting(getattr(cls, method)))
    monkeypatch.setattr(manifest_reader, "to_thread", recording_to_thread)
    parsed = await read_manifest(original.to_bytes(), where="t")
    assert parsed == original and parsed.totals == original.totals
    assert touched == 3 * count
    assert max(per_trip) <= CHECKS_PER_TRIP


async def test_a_parsed_manifest_gives_the_garbage_collector_nothing_to_walk() -> None:
    """Entries are untracked (``gc=False``): parsing 20,000 of them adds next to no object the
    cyclic collector walks, so a parse cannot bring on the full collections that stall the
    loop (an entry that is a dataclass, as before, adds one object per entry)."""
    data = many(20_000).to_bytes()
    gc.collect()
    before = len(gc.get_objects())
    parsed = await read_manifest(data, where="t")
    gc.collect()
    assert len(gc.get_objects()) - before < 1000
    assert not any(gc.is_tracked(e) for e in parsed.entries)
    assert len(parsed.entries) == 20_000


def test_a_comma_missing_where_a_batch_ends_is_refused() -> None:
    lines = many(LINES_PER_TRIP + 5).to_json().split(b"\n")
    assert lines[LINES_PER_TRIP].endswith(b",")  # the last line of the first batch
    lines[LINES_PER_TRIP] = lines[LINES_PER_TRIP][:-1]
    with pytest.raises(ManifestError, match="not separated by commas"):
        Manifest.from_json(b"\n".join(lines), where="t")
