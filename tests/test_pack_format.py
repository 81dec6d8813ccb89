"""The pack and INDEX formats (``packs.py``) and their retried reads and writes
(``repository.py``), on the memory store and, through ``any_store``, on local, S3 and GCS."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import zlib
from typing import Any

import pytest
import zstandard
from prometheus_client import CollectorRegistry

from asyncbackup import MemoryStorage, threads
from asyncbackup import packs as packs_module
from asyncbackup.compression import Compression, codec_of_ref, decode, encode_chunk
from asyncbackup.config import RetryPolicy
from asyncbackup.errors import IntegrityError, ManifestError, ObjectNotFoundError
from asyncbackup.layout import index_key, pack_id_of_key, pack_key
from asyncbackup.metrics import Metrics
from asyncbackup.packs import (
    INDEX_LINE_CHUNKS,
    MAGIC,
    TAIL,
    TAIL_READ,
    PackIndex,
    Place,
    build_pack,
    parse_pack,
    parse_trailer,
    read_index,
    trailer_length,
)
from asyncbackup.repository import Repository
from asyncbackup.retry import Retrier
from asyncbackup.storage.base import Storage
from tests.conftest import RecordingSleep
from tests.remote import StoreUnderTest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks_of(*raws: bytes, compression: Compression | None = None) -> list[tuple[str, bytes, int]]:
    out = []
    for raw in raws:
        if compression is None:
            out.append((sha(raw), raw, len(raw)))
        else:
            stored, ref, _ = encode_chunk(raw, sha(raw), compression)
            out.append((ref, stored, len(raw)))
    return out


def repository(store: Storage, sleep: RecordingSleep) -> Repository:
    metrics = Metrics(CollectorRegistry())
    retrier = Retrier(RetryPolicy(max_attempts=3), concurrency=4, metrics=metrics, sleep=sleep)
    return Repository(store, retrier, operation="backup")


def test_a_pack_holds_its_chunks_end_to_end_and_describes_them() -> None:
    raws = [os.urandom(100), b"log line\n" * 500, b"", os.urandom(7000)]
    chunks = chunks_of(*raws, compression=Compression("zstd"))
    pack = build_pack(chunks)
    assert pack.pack_id == sha(pack.data)
    assert pack.data.endswith(MAGIC)
    described = parse_pack(pack.data, where="p")
    assert described == list(pack.chunks)
    for (ref, stored, raw_length), entry, raw in zip(chunks, described, raws, strict=True):
        assert entry.ref == ref and entry.raw_length == raw_length == len(raw)
        assert pack.data[entry.offset : entry.offset + entry.length] == stored
        assert decode(stored, codec_of_ref(ref), limit=len(raw), where="c") == raw
    assert chunks[1][0].endswith(".zst") and not chunks[0][0].endswith(".zst")  # per chunk


def test_the_same_chunks_make_the_same_pack() -> None:
    chunks = chunks_of(b"a" * 10, b"b" * 20)
    assert build_pack(chunks).pack_id == build_pack(chunks).pack_id
    assert build_pack(chunks).pack_id != build_pack(chunks[::-1]).pack_id


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1] + b"X", "does not end as a pack does"),
        (lambda d: d[:-8] + TAIL.pack(len(d), MAGIC), "claims a trailer"),
        (lambda d: d[:4], "too short for a pack"),
        (lambda d: d[:-12] + b"\0\0\0\0" + d[-8:], "trailer cannot be read"),
    ],
)
def test_a_damaged_pack_is_refused_clearly(damage: object, message: str) -> None:
    pack = build_pack(chunks_of(b"x" * 300, b"y" * 400))
    with pytest.raises(IntegrityError, match=message):
        parse_pack(damage(pack.data), where="packs/p")  # type: ignore[operator]


def test_a_trailer_placing_a_chunk_past_the_data_is_refused() -> None:
    trailer = zstandard.ZstdCompressor().compress(
        b'{"pack_format":1,"chunks":[["' + b"a" * 64 + b'",0,500,500]]}'
    )
    with pytest.raises(IntegrityError, match="lies past its data"):
        parse_trailer(trailer, 100 + len(trailer) + TAIL.size, where="p")
    with pytest.raises(IntegrityError, match="cannot be read"):
        parse_trailer(zstandard.ZstdCompressor().compress(b'{"pack_format":2}'), 999, where="p")


def test_the_layout_of_packs_and_indexes() -> None:
    pack_id = "ab" * 32
    assert pack_key(pack_id) == f"packs/{pack_id}"
    assert pack_id_of_key(pack_key(pack_id)) == pack_id
    assert pack_id_of_key("packs/.tmp-x") is None and pack_id_of_key(f"chunks/{pack_id}") is None
    assert index_key("n1") == "backups/n1/INDEX"


def index_of_packs(*packs: list[tuple[str, bytes, int]]) -> PackIndex:
    index = PackIndex()
    for chunks in packs:
        pack = build_pack(chunks)
        index.add_pack(pack.pack_id, len(pack.data), pack.chunks)
    return index


def test_an_index_round_trips_and_lines_stay_short() -> None:
    many = chunks_of(*(i.to_bytes(4, "big") for i in range(INDEX_LINE_CHUNKS + 5)))
    index = index_of_packs(many, chunks_of(b"other", b"more", compression=Compression("gzip")))
    data = index.encode("b1")
    back = PackIndex.decode(data, where="INDEX", limit=1 << 30)
    assert back.places == index.places and back.pack_sizes == index.pack_sizes
    lines = zstandard.ZstdDecompressor().decompress(data).splitlines()
    assert len(lines) == 1 + 2 + 1  # the head, the big pack on two lines, the small one
    assert all(len(line) < 100 * INDEX_LINE_CHUNKS for line in lines)
    assert len(data) / len(index) < 110  # what docs/design.md promises per chunk, compressed


async def test_an_index_is_read_in_bounded_trips_with_the_loop_free_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deterministic, not timed: ``read_index`` (how a backup reads its parent's INDEX, and a
    restore the backup's) adds at most one line's ``INDEX_LINE_CHUNKS`` places per
    worker-thread trip, and the loop runs between trips (one call of ``PackIndex.decode`` for
    the whole INDEX, as before, fails this); what it reads equals the index written."""
    index = index_of_packs(chunks_of(*(i.to_bytes(4, "big") for i in range(3 * INDEX_LINE_CHUNKS))))
    data = index.encode("b1")
    ticks = 0
    trips: list[tuple[int, int]] = []  # (ticks when it started, places added by it)

    async def recording_to_thread(call: Any, *args: Any, **kwargs: Any) -> Any:
        before = len(args[0]) if args and isinstance(args[0], PackIndex) else 0
        started = ticks
        result = await threads.to_thread(call, *args, **kwargs)
        if args and isinstance(args[0], PackIndex):
            trips.append((started, len(args[0]) - before))
        return result

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    done = False
    monkeypatch.setattr(packs_module, "to_thread", recording_to_thread)
    task = asyncio.create_task(ticker())
    try:
        back = await read_index(data, where="INDEX", limit=1 << 30)
    finally:
        done = True
        await task
    assert back.places == index.places and back.pack_sizes == index.pack_sizes
    assert not any(gc.is_tracked(p) for p in back.places.values())  # see FileEntry: gc=False
    assert [n for _, n in trips] == [INDEX_LINE_CHUNKS] * 3
    assert trips[0][0] < trips[1][0] < trips[2][0]  # the loop ran between trips
    with pytest.raises(ManifestError, match="INDEX is corrupt"):
        await read_index(data[:-9], where="INDEX", limit=1 << 30)


def test_restricted_keeps_only_the_refs_named_and_their_packs() -> None:
    first, second = chunks_of(b"1", b"2"), chunks_of(b"3")
    index = index_of_packs(first, second)
    kept = index.restricted([first[1][0], "f" * 64])
    assert list(kept.places) == [first[1][0]]
    assert set(kept.pack_sizes) == {kept.places[first[1][0]].pack}
    assert list(kept.by_pack()) == [kept.places[first[1][0]].pack]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"index_format":9}\n', "index_format"),
        (b"not json\n", "corrupt"),
        (b'{"index_format":1}\n{"pack":"xyz","size":100,"chunks":[]}\n', "not a pack id"),
        (
            b'{"index_format":1}\n{"pack":"'
            + b"a" * 64
            + b'","size":100,"chunks":[["'
            + b"b" * 64
            + b'",90,50]]}\n',
            "past the end",
        ),
        (
            b'{"index_format":1}\n{"pack":"'
            + b"a" * 64
            + b'","size":100,"chunks":[["../x",0,1]]}\n',
            "not a chunk ref",
        ),
        (
            b'{"index_format":1}\n{"pack":"'
            + b"a" * 64
            + b'","size":100,"chunks":[["'
            + b"b" * 64
            + b'",-1,5]]}\n',
            "not an offset",
        ),
    ],
)
def test_a_damaged_index_is_refused_clearly(text: bytes, message: str) -> None:
    data = zstandard.ZstdCompressor().compress(text)
    with pytest.raises(ManifestError, match=message):
        PackIndex.decode(data, where="s/backups/b/INDEX", limit=1 << 20)


def test_an_index_is_decompressed_within_its_limit() -> None:
    data = zstandard.ZstdCompressor().compress(b'{"index_format":1}\n' + b" " * 5000)
    with pytest.raises(ManifestError, match="more than 1000 bytes"):
        PackIndex.decode(data, where="INDEX", limit=1000)
    with pytest.raises(ManifestError, match="corrupt"):
        PackIndex.decode(zlib.compress(b"x"), where="INDEX", limit=1000)


async def test_packs_and_indexes_through_the_repository(
    any_store: StoreUnderTest, sleep: RecordingSleep
) -> None:
    """On every kind of store: a pack stored whole, read by ranges, whole, and by its trailer;
    an INDEX written and read back; a missing pack or INDEX named."""
    async with any_store.store() as store:
        repo = repository(store, sleep)
        raws = [os.urandom(3000) for _ in range(40)]
        pack = build_pack(chunks_of(*raws))
        await repo.put_pack(pack, label="pack 1")
        assert await repo.pack_ids() == {pack.pack_id}
        size = len(pack.data)
        third = pack.chunks[3]
        part = await repo.read_pack(pack.pack_id, third.offset, third.length)
        assert part == raws[3]
        assert await repo.read_pack(pack.pack_id, 0, size, whole=True) == pack.data
        assert await repo.read_pack_trailer(pack.pack_id, size) == list(pack.chunks)

        index = PackIndex()
        index.add_pack(pack.pack_id, size, pack.chunks)
        await repo.put_index("b1", index)
        back = await repo.load_index("b1")
        assert back.places == index.places
        assert back.get(third.ref) == Place(pack.pack_id, third.offset, third.length)

        with pytest.raises(ObjectNotFoundError):
            await repo.read_pack("0" * 64, 0, 10)
        with pytest.raises(ManifestError, match="INDEX is missing"):
            await repo.load_index("b2")


async def test_a_trailer_larger_than_the_first_read_takes_a_second(sleep: RecordingSleep) -> None:
    store = MemoryStorage()
    repo = repository(store, sleep)
    raws = [os.urandom(40) for _ in range(3000)]  # ~100 KiB of random refs: a large trailer
    pack = build_pack(chunks_of(*raws))
    assert trailer_length(pack.data[-8:], len(pack.data), where="p") > TAIL_READ
    await repo.put_pack(pack, label="big trailer")
    assert await repo.read_pack_trailer(pack.pack_id, len(pack.data)) == list(pack.chunks)


def test_a_pack_trailer_of_many_chunks_is_encoded_a_bounded_number_of_rows_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One ``json`` call over a trailer of 20,000 chunks held the GIL, hence any event loop,
    for 13 ms; each call now encodes at most ``TRAILER_ROWS_PER_CALL`` rows, and the trailer
    is the same bytes as one call's (packs written before read the same)."""
    chunks = [
        (hashlib.sha256(b"%d" % i).hexdigest(), b"%d" % i, len(b"%d" % i)) for i in range(2500)
    ]
    rows_per_call: list[int] = []
    real_encode = json.JSONEncoder.encode

    def counting(encoder: json.JSONEncoder, value: Any) -> str:
        rows_per_call.append(len(value["chunks"] if isinstance(value, dict) else value))
        return real_encode(encoder, value)

    monkeypatch.setattr(json.JSONEncoder, "encode", counting)
    pack = build_pack(chunks)
    monkeypatch.undo()
    assert max(rows_per_call) <= packs_module.TRAILER_ROWS_PER_CALL < len(chunks)
    assert sum(rows_per_call) == len(chunks)
    listed = parse_pack(pack.data, where="p")
    assert [(c.ref, c.length, c.raw_length) for c in listed] == [
        (ref, len(data), raw) for ref, data, raw in chunks
    ]
    length = trailer_length(pack.data[-TAIL.size :], len(pack.data), where="p")
    text = zstandard.ZstdDecompressor().decompress(
        pack.data[len(pack.data) - TAIL.size - length : len(pack.data) - TAIL.size]
    )
    whole = {
        "pack_format": 1,
        "chunks": [[c.ref, c.offset, c.length, c.raw_length] for c in listed],
    }
    assert text == json.dumps(whole, separators=(",", ":")).encode()
