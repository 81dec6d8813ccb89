"""Packs: many small chunks in one object, and the INDEX that says where each of them lies.

A **pack** (``packs/<sha256 of its bytes>``) holds small chunks, each encoded on its own (raw,
zstd or gzip, as its ref says), end to end, then a trailer that describes them, then 8 bytes::

    chunk 0 | chunk 1 | ... | chunk n-1 | trailer | u32 LE: trailer length | b"ABPK"

The trailer is zstd-compressed JSON, ``{"pack_format": 1, "chunks": [[ref, offset, length,
raw_length], ...]}``: a pack describes itself, as restic's pack header does, so an INDEX can be
rebuilt from the packs alone and a repack can read what a pack holds. Its key is the hash of its
bytes, so an upload repeated by a retry or a re-run writes the same bytes under the same key.

An **INDEX** (``backups/<name>/INDEX``) maps each packed chunk a backup's MANIFEST names to its
``Place``: pack, offset, stored length. A ref the INDEX does not hold is a chunk object of its
own (``chunks/<ref>``), as in every backup before packs. It is zstd-compressed JSON lines: a head
line ``{"index_format": 1, "backup": name}``, then one line per pack (a pack of many chunks
over several lines, at most ``INDEX_LINE_CHUNKS`` each, so no line is slow to parse)::

    {"pack": "<sha256>", "size": <bytes of the pack>, "chunks": [["<ref>", offset, length], ...]}

Everything here is pure and blocking: callers run the encoders and parsers in a worker thread
(``to_thread``), never on the event loop. ``repository.py`` reads and writes these objects
through the retry layer; ``packer.py`` fills packs; ``packread.py`` reads chunks out of them.
See docs/design.md, "Packs", for the decisions and the arguments.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import zstandard

from asyncbackup.errors import IntegrityError, ManifestError
from asyncbackup.layout import is_chunk_ref, is_digest
from asyncbackup.threads import to_thread

PACK_FORMAT = 1
INDEX_FORMAT = 1
MAGIC = b"ABPK"
TAIL = struct.Struct("<I4s")
"""The last 8 bytes of a pack: the trailer's length, then ``MAGIC``."""
TAIL_READ = 64 * 1024
"""How many bytes at a pack's end a reader fetches first: the trailer of a pack of up to about
1,000 chunks fits, so one range request usually reads it (restic reads eagerly the same way)."""
MAX_TRAILER = 16 * 1024 * 1024
"""A trailer claiming more is refused unread (restic bounds its pack header the same way)."""
INDEX_LINE_CHUNKS = 1000


class PackedChunk(msgspec.Struct, frozen=True, gc=False):
    """One chunk inside a pack, as the pack's trailer records it. Untracked by the garbage
    collector, like ``FileEntry`` and for the same reason: a pack of small files holds
    thousands."""

    ref: str
    offset: int
    length: int  # as stored (encoded)
    raw_length: int  # once decoded


class Place(msgspec.Struct, frozen=True, gc=False):
    """Where a packed chunk lies: which pack, and its stored bytes' offset and length there.
    Untracked by the garbage collector (see ``FileEntry``): a parent's INDEX holds one per
    packed chunk, 100,000 and more, for as long as the backup runs."""

    pack: str
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class Pack:
    """A pack as built for upload: its bytes, its id (their sha256) and what it holds."""

    data: bytes
    pack_id: str
    chunks: tuple[PackedChunk, ...]


def build_pack(chunks: Sequence[tuple[str, bytes, int]]) -> Pack:
    """A pack of ``chunks`` (ref, stored bytes, raw length), in that order. Blocking: hashing
    16 MiB takes tens of milliseconds, so callers run it in a worker thread."""
    parts: list[bytes] = []
    entries: list[PackedChunk] = []
    offset = 0
    for ref, stored, raw_length in chunks:
        parts.append(stored)
        entries.append(PackedChunk(ref, offset, len(stored), raw_length))
        offset += len(stored)
    trailer = zstandard.ZstdCompressor(write_content_size=True).compress(_trailer_json(entries))
    parts.append(trailer)
    parts.append(TAIL.pack(len(trailer), MAGIC))
    data = b"".join(parts)
    return Pack(data, hashlib.sha256(data).hexdigest(), tuple(entries))


TRAILER_ROWS_PER_CALL = 1000
"""Rows of a pack's trailer encoded per ``json`` call: one call holds the GIL throughout, and
a pack of 16 MiB of small files lists 20,000 chunks or more (13 ms in one call, measured)."""


def _trailer_json(entries: Sequence[PackedChunk]) -> bytes:
    """``{"pack_format": 1, "chunks": [[ref, offset, length, raw length], ...]}``, compact,
    ``TRAILER_ROWS_PER_CALL`` rows per encoder call: the GIL (hence the event loop) is free
    between calls. The same bytes as one ``json.dumps`` of the whole."""
    encode = json.JSONEncoder(separators=(",", ":")).encode
    # Tuples, not lists (the same JSON): the collector stops tracking a tuple of strings and
    # ints at its first young collection, where 20,000 lists would all reach the oldest
    # generation and bring on a full collection (see SourceEntry in walk.py).
    rows = [(c.ref, c.offset, c.length, c.raw_length) for c in entries]
    pieces = [
        encode(rows[start : start + TRAILER_ROWS_PER_CALL])[1:-1]
        for start in range(0, len(rows), TRAILER_ROWS_PER_CALL)
    ]
    return f'{{"pack_format":{PACK_FORMAT},"chunks":[{",".join(pieces)}]}}'.encode()


def trailer_length(tail: bytes, pack_size: int, *, where: str) -> int:
    """The length of the trailer of a pack of ``pack_size`` bytes, from its last bytes.

    Raises:
        IntegrityError: the pack does not end as a pack does, or claims an impossible trailer.
    """
    if len(tail) < TAIL.size or pack_size < TAIL.size:
        raise IntegrityError(f"{where} is corrupt: {pack_size} bytes is too short for a pack")
    length, magic = TAIL.unpack(tail[-TAIL.size :])
    if magic != MAGIC:
        raise IntegrityError(f"{where} is corrupt: it does not end as a pack does")
    if length > min(MAX_TRAILER, pack_size - TAIL.size):
        raise IntegrityError(f"{where} is corrupt: it claims a trailer of {length} bytes")
    return int(length)


def parse_trailer(trailer: bytes, pack_size: int, *, where: str) -> list[PackedChunk]:
    """The chunks a pack's trailer (its compressed bytes, without the 8-byte tail) lists.
    Blocking: run it in a worker thread.

    Raises:
        IntegrityError: the trailer does not decode, or lists a chunk outside the pack's data.
    """
    data_end = pack_size - TAIL.size - len(trailer)
    try:
        text = zstandard.ZstdDecompressor().decompress(trailer, max_output_size=8 * MAX_TRAILER)
        body = json.loads(text)
        if body.get("pack_format") != PACK_FORMAT:
            raise ValueError(f"pack_format {body.get('pack_format')!r}")
        chunks = [PackedChunk(*_entry(item, 4)) for item in body["chunks"]]
    except (zstandard.ZstdError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise IntegrityError(f"{where} is corrupt: its trailer cannot be read ({exc})") from exc
    for chunk in chunks:
        if chunk.offset + chunk.length > data_end:
            raise IntegrityError(f"{where} is corrupt: chunk {chunk.ref} lies past its data")
    return chunks


def parse_pack(data: bytes, *, where: str) -> list[PackedChunk]:
    """The chunks a whole pack holds, from its trailer. Blocking: run it in a worker thread.

    Raises:
        IntegrityError: the bytes are not a pack.
    """
    length = trailer_length(data[-TAIL.size :], len(data), where=where)
    trailer = data[len(data) - TAIL.size - length : len(data) - TAIL.size]
    return parse_trailer(trailer, len(data), where=where)


def _entry(item: Any, fields: int) -> tuple[Any, ...]:
    """A trailer's or INDEX's chunk entry, checked: a ref, then non-negative integers."""
    if not isinstance(item, list) or len(item) != fields:
        raise ValueError(f"an entry of {fields} fields expected, not {item!r:.80}")
    ref, *numbers = item
    if not isinstance(ref, str) or not is_chunk_ref(ref):
        raise ValueError(f"not a chunk ref: {ref!r:.80}")
    for n in numbers:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"not an offset or length: {n!r:.80}")
    return (ref, *numbers)


class PackIndex:
    """Packed chunks by ref: each one's ``Place``, and the size of every pack named."""

    def __init__(self) -> None:
        self.places: dict[str, Place] = {}
        self.pack_sizes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.places)

    def __contains__(self, ref: object) -> bool:
        return ref in self.places

    def get(self, ref: str) -> Place | None:
        """Where chunk ``ref`` lies, or None: then it is the object ``chunks/<ref>``."""
        return self.places.get(ref)

    def add(self, ref: str, place: Place, pack_size: int) -> None:
        """Record that ``ref`` lies at ``place``, in a pack of ``pack_size`` bytes."""
        self.places[ref] = place
        self.pack_sizes[place.pack] = pack_size

    def add_pack(self, pack_id: str, pack_size: int, chunks: Iterable[PackedChunk]) -> None:
        """Record every chunk of a pack (from its trailer, or as ``build_pack`` made it)."""
        for chunk in chunks:
            self.add(chunk.ref, Place(pack_id, chunk.offset, chunk.length), pack_size)

    def update(self, other: PackIndex) -> None:
        """Take every place ``other`` knows (its own win where both know a ref)."""
        self.places.update(other.places)
        self.pack_sizes.update(other.pack_sizes)

    def restricted(self, refs: Iterable[str]) -> PackIndex:
        """The index of ``refs`` alone (those this one knows): a new backup's INDEX is its
        parent's, and the packs it wrote, restricted to the chunks its MANIFEST names."""
        out = PackIndex()
        for ref in refs:
            place = self.places.get(ref)
            if place is not None:
                out.add(ref, place, self.pack_sizes[place.pack])
        return out

    def by_pack(self) -> dict[str, list[tuple[str, Place]]]:
        """Each pack named, with the chunks in it (ref and place), by offset."""
        packs: dict[str, list[tuple[str, Place]]] = {p: [] for p in self.pack_sizes}
        for ref, place in self.places.items():
            packs[place.pack].append((ref, place))
        for chunks in packs.values():
            chunks.sort(key=lambda item: item[1].offset)
        return {p: chunks for p, chunks in packs.items() if chunks}

    def encode(self, backup: str) -> bytes:
        """This index as backup ``backup``'s INDEX object. Blocking: run it in a worker thread."""
        return zstandard.ZstdCompressor(write_content_size=True).compress(
            b"".join(_index_lines(self, backup))
        )

    @staticmethod
    def decode(data: bytes, *, where: str, limit: int) -> PackIndex:
        """An INDEX object's places, each line checked; at most ``limit`` bytes decompressed.
        Blocking: run it in a worker thread.

        Raises:
            ManifestError: the INDEX is corrupt, or larger than ``limit`` once decompressed.
        """
        index = PackIndex()
        index.add_lines(PackIndex.lines_of(data, where=where, limit=limit), where=where)
        return index

    @staticmethod
    def lines_of(data: bytes, *, where: str, limit: int) -> list[bytes]:
        """An INDEX object's lines of places (each of at most ``INDEX_LINE_CHUNKS``), once it
        is decompressed (at most ``limit`` bytes) and its head checked: what ``add_lines``
        takes, a few lines per worker-thread trip when the loop must stay free. Blocking.

        Raises:
            ManifestError: the INDEX is corrupt, or larger than ``limit`` once decompressed.
        """
        with _corrupt(where):
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
            text = reader.read(limit + 1)
            if len(text) > limit:
                raise ValueError(f"it decompresses to more than {limit} bytes")
            lines = text.splitlines()
            head = json.loads(lines[0] if lines else b"null")
            if not isinstance(head, dict) or head.get("index_format") != INDEX_FORMAT:
                raise ValueError(f"index_format {head!r:.80} is not one this version reads")
            return lines[1:]

    def add_lines(self, lines: Iterable[bytes], *, where: str) -> None:
        """Take the places of ``lines`` of the INDEX read from ``where``, each checked.
        Blocking.

        Raises:
            ManifestError: a line is corrupt.
        """
        with _corrupt(where):
            for line in lines:  # one small json.loads per line: the GIL is let go between
                _add_line(self, json.loads(line))


async def read_index(data: bytes, *, where: str, limit: int) -> PackIndex:
    """``PackIndex.decode`` in bounded worker-thread trips with the event loop free between
    them, as a MANIFEST is read (``manifest_reader``): one trip decompresses the INDEX, then
    each parses and checks one line (at most ``INDEX_LINE_CHUNKS`` places, about a
    millisecond). A parent's INDEX of 100,000 packed chunks in one call would hold the loop at
    every switch of the GIL for a third of a second.

    Raises:
        ManifestError: the INDEX is corrupt, or larger than ``limit`` once decompressed.
    """
    index = PackIndex()
    for line in await to_thread(PackIndex.lines_of, data, where=where, limit=limit):
        await to_thread(PackIndex.add_lines, index, (line,), where=where)
    return index


@contextmanager
def _corrupt(where: str) -> Iterator[None]:
    """Every error of reading an INDEX as a ManifestError naming it."""
    try:
        yield
    except (zstandard.ZstdError, ValueError, TypeError, KeyError) as exc:
        raise ManifestError(
            f"{where} is corrupt ({exc}): the backup's packed chunks cannot be found; "
            "restore another backup, or back up the source again"
        ) from exc


def _index_lines(index: PackIndex, backup: str) -> Iterator[bytes]:
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    yield dumps({"index_format": INDEX_FORMAT, "backup": backup}).encode() + b"\n"
    for pack_id, chunks in sorted(index.by_pack().items()):
        for start in range(0, len(chunks), INDEX_LINE_CHUNKS):
            part = chunks[start : start + INDEX_LINE_CHUNKS]
            line = {
                "pack": pack_id,
                "size": index.pack_sizes[pack_id],
                "chunks": [(ref, p.offset, p.length) for ref, p in part],  # see build_pack
            }
            yield dumps(line).encode() + b"\n"


def _add_line(index: PackIndex, line: Any) -> None:
    if not isinstance(line, dict):
        raise ValueError(f"a line is not an object: {line!r:.80}")
    pack_id, size = line["pack"], line["size"]
    if not isinstance(pack_id, str) or not is_digest(pack_id):
        raise ValueError(f"not a pack id: {pack_id!r:.80}")
    if not isinstance(size, int) or isinstance(size, bool) or size < TAIL.size:
        raise ValueError(f"pack {pack_id} has an impossible size {size!r:.80}")
    for item in line["chunks"]:
        ref, offset, length = _entry(item, 3)
        if offset + length > size - TAIL.size:
            raise ValueError(f"chunk {ref} lies past the end of pack {pack_id}")
        index.add(ref, Place(pack_id, offset, length), size)
