"""Reading a backup's chunks wherever they lie: objects of their own, or ranges of packs.

``ChunkSource.get`` is what restore, verify and cat call for each chunk. A ref the backup's
INDEX does not place is read as the object ``chunks/<ref>`` (``Repository.get_chunk``). A packed
ref is read out of its pack, and ``plan`` (the refs a job will read, in order) decides how:

- per pack, when the job needs at least half of its bytes, one GET of the whole pack;
- otherwise range GETs, the ranges of chunks less than ``MERGE_GAP`` apart merged into one.

Each such *segment* is fetched once, by the first chunk that needs it (the others wait for that
fetch), and held until each of its chunks was served, in bytes taken from the job's byte budget
(``budget.ByteBudget``: restore passes the one its buffers take from, so segments and buffers
together stay under ``--buffer-budget``). The segments are the budget's lowest use: taken only
when they fit beside the buffers and nobody waits, given back at once when a buffer would
otherwise wait (``_let_go``), and never kept when someone waits as their fetch ends. A segment
that does not fit, or a chunk asked for again after its segment was let go, is read alone by
one range GET, which is only slower, never wrong. Every chunk is decoded and its sha256 checked
after it is cut out of its segment, so a wrong place in a damaged INDEX is an ``IntegrityError``,
never a silent wrong byte.

**Racing a repack.** A restore takes no lock. Prune's repack writes the new pack, then rewrites
every INDEX naming the old pack (an atomic overwrite), and only then deletes the old pack. So a
reader that finds a pack missing reads the INDEX again (``reload``) and retries at the new
place, which existed before the INDEX named it: see docs/design.md, "Packs". A second repack
may move the chunk again before that read, and so on: the reader reads the INDEX again as long
as each read differs from the one before. When a read gives the same INDEX as the one whose
place failed, the chunk is read there once more (a later repack may have written a pack of the
very same bytes, hence the same name, again), and if the pack is still missing, no repack can
explain it: the read fails, naming the pack. Each further round needs a whole repack to finish
in between, so the loop ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from asyncbackup.budget import ByteBudget
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
"""Bytes of pack segments held between the uses of their chunks, at most, when the job passes
no budget of its own (verify and cat pass ``--buffer-budget``, whose default this is; restore
passes the budget of its buffers)."""
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
    taken: int = 0  # bytes of the budget it holds (while ``data`` is held)
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
        budget: ByteBudget | int = DEFAULT_BUDGET,
    ) -> None:
        self.repo = repo
        self.index = index
        self.names = tuple(names)
        self.budget = budget if isinstance(budget, ByteBudget) else ByteBudget(budget)
        self.budget.add_reclaimer(self._let_go)
        self.requests = 0  # reads of packs: segments, ranges and single chunks
        self._segments: dict[str, _Segment] = {}
        self._held: dict[_Segment, None] = {}  # segments holding data, oldest first
        self._generation = 0  # how many times the INDEX read again differed from the last
        self._rereads = 0  # reads of the INDEX again begun, numbered in order
        self._same_at = -1  # the number of the last one that found the INDEX unchanged
        self._reloading = asyncio.Lock()

    @property
    def held(self) -> int:
        """Bytes of pack segments held now (taken from ``budget``)."""
        return sum(segment.taken for segment in self._held)

    @classmethod
    async def open(
        cls, repo: Repository, manifest: Manifest, *, budget: ByteBudget | int
    ) -> ChunkSource:
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
            ObjectNotFoundError: the chunk (or its pack) is missing from the store, and the
                backup's INDEX, read again, places it there still.
            ManifestError: its pack was missing, and the backup's INDEX could not be read again.
        """
        place = self.index.get(ref)
        if place is None:
            return await self.repo.get_chunk(ref, limit=limit, path=path, label=label, size=size)
        generation = self._generation
        try:
            stored = await self._stored(ref, place, label)
        except ObjectNotFoundError:
            while True:  # a repack moved it: after as many repacks as finish meanwhile
                changed = await self.reload(since=generation, failed_at=self._rereads)
                generation = self._generation
                place = self.index.get(ref)
                if place is None:  # no longer packed: an object of its own
                    return await self.repo.get_chunk(
                        ref, limit=limit, path=path, label=label, size=size
                    )
                try:  # at the new place; or, the INDEX unchanged, at the same place once more
                    stored = await self._read(place.pack, place.offset, place.length, label)
                    break
                except ObjectNotFoundError as missing:
                    if not changed:
                        raise self._still_missing(ref, place, path) from missing
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

    async def reload(self, *, since: int, failed_at: int = -1) -> bool:
        """A pack was missing where the INDEX of generation ``since`` placed a chunk: read the
        backups' INDEXes again (a repack may have moved its chunks). Whether the places
        changed since ``since``: False when the INDEX read again is the same as the last one,
        so retrying would read the same missing place. Concurrent callers share one read: one
        that changed the places serves every caller of an older generation, and one that
        found them unchanged serves every caller whose read failed before it began
        (``failed_at``: how many had begun then), since no repack can have been missed.

        Raises:
            ManifestError: an INDEX is missing (its backup was deleted) or corrupt.
        """
        async with self._reloading:
            if self._generation != since:
                return True  # read again while we waited, and changed: retry at the new place
            if not self.names or self._same_at > failed_at:
                return False
            self._rereads += 1
            number = self._rereads
            fresh = PackIndex()
            for name in self.names:
                fresh.update(await self.repo.load_index(name))
            log.info("a pack was missing: read the INDEX of %s again", ", ".join(self.names))
            if await to_thread(_same, fresh, self.index):  # a million places: off the loop
                self._same_at = number
                return False
            self.index = fresh
            self._generation += 1
            self.clear()  # planned from the old places: each chunk is now read alone
            self._segments = {}
            return True

    def clear(self) -> None:
        """Let go of every segment held (the job is over, or its plan is stale): their bytes
        go back to the budget."""
        self._let_go(self.held)

    def _still_missing(self, ref: str, place: Place, path: str) -> ObjectNotFoundError:
        key = pack_key(place.pack)
        return ObjectNotFoundError(
            f"{self.repo.store.url}/{key} is missing: it holds chunk {ref} of {path}, and the "
            f"INDEX of {', '.join(self.names) or 'the backup'}, read again, still places it "
            "there (no repack moved it). The backup is damaged: 'asyncbackup verify --deep' "
            "names every file it affects; restore an older backup, or back up the source again"
        )

    def _let_go(self, nbytes: int) -> None:
        """Drop held segments, oldest first, until ``nbytes`` of the budget are given back (or
        none is held): a buffer needs the room. Their chunks still to come are read alone."""
        while nbytes > 0 and self._held:
            segment = next(iter(self._held))
            nbytes -= self._drop(segment)

    def _drop(self, segment: _Segment) -> int:
        """Let go of ``segment``'s data and give its bytes back; how many."""
        taken = segment.taken
        self._held.pop(segment, None)
        segment.data, segment.taken, segment.done = None, 0, True
        if taken:
            self.budget.release(taken)
        return taken

    async def _stored(self, ref: str, place: Place, label: str) -> bytes:
        """The stored bytes of packed chunk ``ref``: from its segment, else read alone."""
        segment = self._segments.get(ref)
        if segment is None or segment.done:
            return await self._read(place.pack, place.offset, place.length, label)
        async with segment.lock:  # the first use fetches it, the others wait for that fetch
            data = segment.data
            if data is None and not segment.done:
                data = await self._fetch(segment, label)
        segment.waiting.discard(ref)
        if data is None:  # no room for the segment, or let go: this chunk alone
            # Outside the lock, so the segment's other chunks are not read one after another.
            stored = await self._read(place.pack, place.offset, place.length, label)
        else:
            stored = data[place.offset - segment.start : place.end - segment.start]
        if not segment.waiting and segment.data is not None:  # its last chunk: let it go
            self._drop(segment)
        return stored

    async def _fetch(self, segment: _Segment, label: str) -> bytes | None:
        """Read ``segment`` and hold it, if the budget has room for it now; its bytes (held,
        or, when a buffer waits for room meanwhile, let go at once), or None."""
        length = segment.end - segment.start
        if not self.budget.try_acquire(length):
            return None
        try:
            data = await self._read(segment.pack, segment.start, length, label, whole=segment.whole)
        except BaseException:
            self.budget.release(length)
            raise
        segment.data, segment.taken = data, length
        self._held[segment] = None
        if self.budget.waiting:  # a buffer waits for room: serve the chunk in hand only
            self._drop(segment)
        return data

    async def _read(
        self, pack: str, start: int, length: int, label: str, *, whole: bool = False
    ) -> bytes:
        self.requests += 1
        return await self.repo.read_pack(pack, start, length, whole=whole, label=label)


def _same(one: PackIndex, other: PackIndex) -> bool:
    return one.places == other.places and one.pack_sizes == other.pack_sizes
