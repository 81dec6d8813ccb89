"""Reading a backup's chunks wherever they lie: objects of their own, or ranges of packs.

``ChunkSource.get`` is what restore, verify and cat call for each chunk. A ref the backup's
INDEX does not place is read as the object ``chunks/<ref>`` (``Repository.get_chunk``). A packed
ref is read out of its pack, and ``plan`` (the refs a job will read, in order) decides how:

- per pack, when the job needs at least half of its bytes, one GET of the whole pack;
- otherwise range GETs, the ranges of chunks less than ``MERGE_GAP`` apart merged into one.

Each such *segment* is fetched once, by the first chunk that needs it (the others wait for that
fetch), and held until each of its chunks was served, within a byte ``budget``; a segment that
does not fit, or a chunk asked for again after its segment was let go, is read alone by one
range GET, which is only slower, never wrong. Every chunk is decoded and its sha256 checked
after it is cut out of its segment, so a wrong place in a damaged INDEX is an ``IntegrityError``,
never a silent wrong byte.

**Racing a repack.** A restore takes no lock. Prune's repack writes the new pack, then rewrites
every INDEX naming the old pack (an atomic overwrite), and only then deletes the old pack. So a
reader that finds a pack missing reads the INDEX again (``reload``, once per job) and retries at
the new place, which existed before the INDEX named it: see docs/design.md, "Packs".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from asyncbackup.chunking import sha256_hex
from asyncbackup.compression import Codec, codec_of_ref, decode
from asyncbackup.errors import IntegrityError, ObjectNotFoundError
from asyncbackup.layout import digest_of_ref, pack_key
from asyncbackup.manifest import PACKED_FORMAT_VERSION, Manifest
from asyncbackup.packs import PackIndex, Place
from asyncbackup.repository import Repository
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
MERGE_GAP = 1024 * 1024
"""Ranges of one pack closer than this are read as one: a gap costs less than a request."""
WHOLE_SHARE = 0.5
"""A pack of which a job needs at least this share of the bytes is read whole, by one GET."""
DEFAULT_BUDGET = 128 * 1024 * 1024
"""Bytes of pack segments held between the uses of their chunks, at most (restore and verify
pass ``--buffer-budget``, whose default this is)."""
_DECODE_INLINE_LIMIT = 64 * 1024  # below this, a thread hop costs more than hashing on the loop


@dataclass(eq=False)
class _Segment:
    """A stretch of one pack that a job reads with one request: the whole pack, or a range."""

    pack: str
    start: int
    end: int
    whole: bool
    waiting: set[str] = field(default_factory=set)  # refs in it not yet served
    data: bytes | None = None
    done: bool = False  # served and let go: a later use reads its chunk alone
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _decoded(stored: bytes, codec: Codec, limit: int, where: str) -> tuple[bytes, str]:
    data = decode(stored, codec, limit=limit, where=where)
    return data, sha256_hex(data)


class ChunkSource:
    """The chunks of one or more backups (``names``), read through their INDEX (``index``)."""

    def __init__(
        self,
        repo: Repository,
        index: PackIndex,
        *,
        names: Sequence[str] = (),
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.repo = repo
        self.index = index
        self.names = tuple(names)
        self.budget = budget
        self.requests = 0  # reads of packs: segments, ranges and single chunks
        self._segments: dict[str, _Segment] = {}
        self._held = 0
        self._reloaded = False
        self._reloading = asyncio.Lock()

    @classmethod
    async def open(cls, repo: Repository, manifest: Manifest, *, budget: int) -> ChunkSource:
        """The chunks of backup ``manifest``: its INDEX is read if it has one (format 4).

        Raises:
            ManifestError: its INDEX is missing or corrupt.
        """
        index = PackIndex()
        if manifest.format_version >= PACKED_FORMAT_VERSION:
            index = await repo.load_index(manifest.name)
        return cls(repo, index, names=[manifest.name], budget=budget)

    def plan(self, refs: Iterable[str]) -> None:
        """Group the packed chunks among ``refs`` (what the job will read) into segments, one
        request each. Blocking for a million refs: callers may run it in a worker thread."""
        wanted: dict[str, dict[str, Place]] = {}
        for ref in refs:
            place = self.index.get(ref)
            if place is not None:
                wanted.setdefault(place.pack, {})[ref] = place
        segments: dict[str, _Segment] = {}
        for pack, chunks in wanted.items():
            size = self.index.pack_sizes[pack]
            if sum(p.length for p in chunks.values()) >= WHOLE_SHARE * size:
                whole = _Segment(pack, 0, size, whole=True, waiting=set(chunks))
                segments.update(dict.fromkeys(chunks, whole))
                continue
            current: _Segment | None = None
            for ref, place in sorted(chunks.items(), key=lambda item: item[1].offset):
                if current is None or place.offset - current.end >= MERGE_GAP:
                    current = _Segment(pack, place.offset, place.end, whole=False)
                current.end = max(current.end, place.end)
                current.waiting.add(ref)
                segments[ref] = current
        self._segments = segments

    async def get(self, ref: str, *, limit: int, path: str, label: str, size: int = 0) -> bytes:
        """Chunk ``ref`` of ``path``, decoded (to at most ``limit`` bytes), its hash checked.

        Raises:
            IntegrityError: the bytes do not decode, or do not hash to the ref's digest.
            ObjectNotFoundError: the chunk (or its pack) is missing from the store.
            ManifestError: its pack was missing, and the backup's INDEX could not be read again.
        """
        place = self.index.get(ref)
        if place is None:
            return await self.repo.get_chunk(ref, limit=limit, path=path, label=label, size=size)
        try:
            stored = await self._stored(ref, place, label)
        except ObjectNotFoundError:
            if not await self.reload():
                raise
            place = self.index.get(ref)
            if place is None:  # no longer packed: an object of its own
                return await self.repo.get_chunk(
                    ref, limit=limit, path=path, label=label, size=size
                )
            stored = await self._read(place.pack, place.offset, place.length, label)
        where = f"chunk {ref} of {path} (in {pack_key(place.pack)} at {place.offset})"
        codec = codec_of_ref(ref)
        if codec == "none" and len(stored) <= _DECODE_INLINE_LIMIT:
            data, digest = stored, sha256_hex(stored)
        else:
            data, digest = await to_thread(_decoded, stored, codec, limit, where)
        if digest != digest_of_ref(ref):
            raise IntegrityError(
                f"{where} is corrupt in {self.repo.store.url}: its bytes do not match its hash "
                "(the pack, or the INDEX that places it, is damaged); restore an older backup, "
                "or back up the source again"
            )
        return data

    async def reload(self) -> bool:
        """Read the backups' INDEXes again, once per job (a pack was missing: a repack may
        have moved its chunks); whether the places may have changed.

        Raises:
            ManifestError: an INDEX is missing (its backup was deleted) or corrupt.
        """
        async with self._reloading:
            if self._reloaded:
                return bool(self.names)
            self._reloaded = True
            if not self.names:
                return False
            fresh = PackIndex()
            for name in self.names:
                fresh.update(await self.repo.load_index(name))
            log.info("a pack was missing: read the INDEX of %s again", ", ".join(self.names))
            self.index = fresh
            self._segments = {}  # planned from the old places: each chunk is now read alone
            return True

    async def _stored(self, ref: str, place: Place, label: str) -> bytes:
        """The stored bytes of packed chunk ``ref``: from its segment, else read alone."""
        segment = self._segments.get(ref)
        if segment is None or segment.done:
            return await self._read(place.pack, place.offset, place.length, label)
        async with segment.lock:  # the first use fetches it, the others wait for that fetch
            data = segment.data
            if data is None and not segment.done:
                length = segment.end - segment.start
                if self._held + length > self.budget:  # no room: this chunk alone
                    return await self._read(place.pack, place.offset, place.length, label)
                data = await self._read(
                    segment.pack, segment.start, length, label, whole=segment.whole
                )
                segment.data = data
                self._held += len(data)
        if data is None:  # let go by the use before us: read alone
            return await self._read(place.pack, place.offset, place.length, label)
        piece = data[place.offset - segment.start : place.end - segment.start]
        segment.waiting.discard(ref)
        if not segment.waiting and segment.data is not None:  # its last chunk: let it go
            self._held -= len(segment.data)
            segment.data = None
            segment.done = True
        return piece

    async def _read(
        self, pack: str, start: int, length: int, label: str, *, whole: bool = False
    ) -> bytes:
        self.requests += 1
        return await self.repo.read_pack(pack, start, length, whole=whole, label=label)
