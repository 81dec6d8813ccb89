"""Packs in prune: drop the packs no kept backup names, repack those mostly unused.

Runs inside ``prune.py``'s job, under the exclusive lock, after the MANIFESTs (and INDEXes) of
the backups let go are deleted:

1. **Live places.** Each kept backup's INDEX is read, one at a time, and folded into ``LivePacks``:
   for every pack a kept backup names, which of its places (offset, ref, length) are in use, and
   which backups name it. An INDEX that cannot be read stops the prune before anything is deleted.
2. **Plan** (``plan_packs``): one listing of ``packs/``. A pack a kept INDEX names but the
   listing lacks stops the prune (data is missing: nothing deleted). A pack no kept INDEX names
   (a removed backup's, a crashed backup's) is *unused*: deleted once older than the grace
   period. A pack whose unused share may exceed ``max_unused`` has its trailer read (one range
   GET) to learn exactly how many of its bytes no kept backup uses; above the threshold it is
   *repacked*, worst first, within ``max_repack_bytes`` of live bytes to copy.
3. **Unused packs** are deleted (batches, the lock checked before each).
4. **Repack** (``Repacker``): the live chunks of the packs to repack are read by range (or whole,
   when at least half the pack is live), each checked against its hash, and written into new
   packs of about ``pack_size``, several old packs' leftovers batched into one, a chunk present
   in two old packs written once. Each new pack is an ordinary pack upload: its sha256 is sent
   as the PUT's checksum and retried as a unit. The store is synced (local store: fsync).
5. **INDEX rewrites**: every kept INDEX naming a repacked pack is read again, its places in
   those packs replaced by the new ones, and written back: one atomic overwrite each (a PUT on
   S3 and GCS, a rename on the local store). The store is synced again.
6. **Old packs** are deleted, last, in batches, the lock checked before each.

**Invariant.** At every instant, every place that the INDEX of a committed backup names lies in a
pack that exists and holds that chunk's bytes there.

*Proof sketch.* Only steps 3 and 6 delete packs, only step 5 changes INDEXes, and no backup
commits or deletes meanwhile (the exclusive lock; ``prune.py``). Every committed backup's INDEX
was read in step 1, because every committed MANIFEST was (``prune.py``, point c). (i) Step 3
deletes only packs that no committed INDEX names. (ii) A new pack is durable (written, then
synced) before step 5 names it, and holds at each new place the same verified bytes the old
place held. (iii) Step 5 overwrites each INDEX atomically, so a reader (or a crash) sees either
the old INDEX, whose packs all still exist (none is deleted before step 6), or the new one, whose
packs exist by (ii). (iv) Step 6 starts only after every INDEX naming an old pack was rewritten
and synced, and after a check that none of them still names one; so no committed INDEX names a
pack step 6 deletes. A crash (SIGKILL) between any two store calls therefore leaves every INDEX
pointing at packs that exist; what it can leave behind is garbage only: new packs no INDEX names
yet (unused: removed by a later prune after the grace period) or old packs no INDEX names any
more (likewise). A repack run again after a crash rebuilds the same packs (same chunks in the
same order give the same bytes, hence the same key), so a retried upload is harmless.

*Readers* take no lock: a restore that read an INDEX before step 5 and asks for an old pack after
step 6 finds it missing; the pack reader then reads the INDEX again and finds the new places,
since step 6 began only after step 5's writes completed (read-after-write consistency); if a
later repack moved them again meanwhile, it reads the INDEX again, as long as it keeps changing
(``packread.py``).

**Memory**: at most ``READ_AHEAD`` (2) old packs are read ahead, fewer when ``--buffer-budget``
(``EngineConfig.buffer_budget``) has no room for them beside the new pack being filled and the
one being uploaded; each read briefly holds its bytes and the chunks cut from them. So about
``6 * pack_size`` at most (96 MiB at 16 MiB packs), plus ``LivePacks``: about 150 bytes per
distinct packed chunk the kept backups name. Measured (``benchmarks/repack.py``, 125 MiB of
small files, half of them let go): 103 MiB peak RSS for the whole prune, restic's 75 MiB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from asyncbackup.chunking import sha256_hex
from asyncbackup.compression import codec_of_ref, decode
from asyncbackup.config import DEFAULT_BUFFER_BUDGET
from asyncbackup.errors import IntegrityError
from asyncbackup.layout import digest_of_ref, pack_key
from asyncbackup.locks import RepositoryLock
from asyncbackup.packs import Pack, Place, build_pack
from asyncbackup.packuse import DEFAULT_PACK_SIZE, LivePacks, RepackPolicy
from asyncbackup.pool import TaskPool
from asyncbackup.repository import Repository
from asyncbackup.retry import Transfer
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
OPERATION = "prune"

READ_AHEAD = 2
"""Old packs read ahead at most (fewer if ``--buffer-budget`` is tight): with the new pack being
filled and the one being sent, enough to keep a store busy, whose requests are whole packs or
long ranges; more only raised the peak RSS (``benchmarks/repack.py``: 165 MiB at 6 ahead)."""
MERGE_GAP = 2**20
"""Live ranges of one pack closer than this are read by one range GET (as restore does)."""


@dataclass(frozen=True)
class RepackResult:
    """What a repack wrote: the new packs (id -> size) and the chunks it copied."""

    new_packs: dict[str, int]
    chunks_copied: int
    bytes_copied: int


T = TypeVar("T")
R = TypeVar("R")
_Batch = tuple[list[tuple[str, bytes, int]], dict[str, list[tuple[str, int]]]]
"""Chunks for one new pack (ref, stored bytes, raw length), and each one's old places."""
Deleter = Callable[[list[str]], Awaitable[None]]
"""Deletes keys in batches, checking the lock before each (``PruneJob._delete_checked``)."""


class Repacker:
    """Steps 4 to 6 of the module docstring for one plan."""

    def __init__(
        self,
        repo: Repository,
        live: LivePacks,
        *,
        policy: RepackPolicy,
        lock: RepositoryLock,
        delete: Deleter,
        concurrency: int,
        buffer_budget: int = DEFAULT_BUFFER_BUDGET,
    ) -> None:
        self.repo = repo
        self.live = live
        self.policy = policy
        self.lock = lock
        self.delete = delete
        self.concurrency = concurrency
        self.pack_size = policy.pack_size or DEFAULT_PACK_SIZE
        # Packs read ahead: what the byte budget leaves beside the pack filled and the one sent.
        self.ahead = max(1, min(READ_AHEAD, buffer_budget // self.pack_size - 2))
        self.moved: dict[tuple[str, int], Place] = {}  # (old pack, offset) -> new place
        self.new_packs: dict[str, int] = {}
        self._new_place: dict[str, Place] = {}  # ref -> where it went: written once
        self._batch: list[tuple[str, bytes, int]] = []  # ref, stored bytes, raw length
        self._batch_bytes = 0
        self._waiting: dict[str, list[tuple[str, int]]] = {}  # ref in the batch -> old places
        self._full: list[_Batch] = []  # batches ready to upload
        self._copied = 0

    async def run(self, packs: Iterable[str]) -> RepackResult:
        """Repack ``packs``, rewrite the INDEXes naming them, then delete them.

        Raises:
            IntegrityError: a live chunk is corrupt in its pack; no INDEX was changed and no
                old pack deleted (the new packs stay unnamed, for a later prune to remove).
            LockError: the lock was lost; nothing more was changed.
            BackupFailed: the store failed (every INDEX still names packs that exist).
        """
        old = sorted(packs)
        if not old:
            return RepackResult({}, 0, 0)
        async for pack_id, chunks in _in_order(old, self._read_live, ahead=self.ahead):
            for offset, ref, stored, raw_length in chunks:
                self._add(pack_id, offset, ref, stored, raw_length)
            while self._full:  # one upload at a time, while the next packs are read
                await self._upload(*self._full.pop(0))
        if self._batch:
            await self._upload(*self._take_batch())
        await self._sync("new packs")  # durable before any INDEX names them
        await self.lock.check()
        named = sorted(set().union(*(self.live.named_by[p] for p in old)))
        async with TaskPool(OPERATION, limit=self.concurrency, outcome=_REWRITING) as pool:
            for name in named:
                await pool.spawn(f"INDEX of {name}", partial(self._rewrite, name, set(old)))
        await self._sync("rewritten INDEXes")  # durable before the packs they named go
        await self.delete([pack_key(p) for p in old])
        return RepackResult(dict(self.new_packs), len(self._new_place), self._copied)

    async def _read_live(self, pack_id: str) -> list[tuple[int, str, bytes, int]]:
        """The live chunks of ``pack_id``: (offset, ref, stored bytes, raw length), each
        checked against its hash."""
        use = self.live.uses[pack_id]
        wanted = sorted((offset, ref, length) for offset, (ref, length) in use.live.items())
        mostly_live = 2 * use.live_bytes >= use.size  # then one GET of it all is cheaper
        spans = [(0, use.size, wanted)] if mostly_live else _merge(wanted)
        chunks: list[tuple[int, str, bytes, int]] = []
        for start, length, inside in spans:
            whole = start == 0 and length == use.size
            data = await self.repo.read_pack(pack_id, start, length, whole=whole, label="repack")
            where = f"{self.repo.store.url}/{pack_key(pack_id)}"
            limit = self.live.max_chunk_size
            chunks += await to_thread(_checked, data, start, inside, limit=limit, where=where)
        return chunks

    def _add(self, pack_id: str, offset: int, ref: str, stored: bytes, raw_length: int) -> None:
        old = (pack_id, offset)
        if ref in self._new_place:  # a copy of it is written already
            self.moved[old] = self._new_place[ref]
        elif ref in self._waiting:  # a copy of it is in the batch
            self._waiting[ref].append(old)
        else:
            if self._batch and self._batch_bytes + len(stored) > self.pack_size:
                self._full.append(self._take_batch())
            self._batch.append((ref, stored, raw_length))
            self._batch_bytes += len(stored)
            self._waiting[ref] = [old]

    def _take_batch(self) -> _Batch:
        batch, waiting = self._batch, self._waiting
        self._batch, self._waiting, self._batch_bytes = [], {}, 0
        return batch, waiting

    async def _upload(
        self, batch: list[tuple[str, bytes, int]], waiting: dict[str, list[tuple[str, int]]]
    ) -> None:
        pack: Pack = await to_thread(build_pack, batch)
        await self.repo.put_pack(pack, label="repack")
        self.new_packs[pack.pack_id] = len(pack.data)
        for chunk in pack.chunks:
            place = Place(pack.pack_id, chunk.offset, chunk.length)
            self._new_place[chunk.ref] = place
            for old in waiting[chunk.ref]:
                self.moved[old] = place
            self._copied += chunk.length
        log.info(
            "prune: wrote pack %s (%d chunks, %.1f MiB)",
            pack.pack_id[:12], len(pack.chunks), len(pack.data) / 2**20,
        )  # fmt: skip

    async def _rewrite(self, name: str, old: set[str]) -> None:
        index = await self.repo.load_index(name)
        for ref, place in list(index.places.items()):
            if place.pack in old:
                new = self.moved.get((place.pack, place.offset))
                if new is None:  # cannot happen: the plan came from this very INDEX
                    raise IntegrityError(
                        f"prune: chunk {ref} of backup {name} in {pack_key(place.pack)} was not "
                        "repacked; no pack was deleted. Please report this"
                    )
                index.add(ref, new, self.new_packs[new.pack])
        await self.repo.put_index(name, index)

    async def _sync(self, what: str) -> None:
        repo = self.repo

        async def attempt() -> None:
            repo.guard()
            await repo.store.sync()

        await repo.retrier.run(Transfer(OPERATION, "sync", f"{repo.store.url} ({what})"), attempt)


_REWRITING = "every INDEX names packs that exist; the old packs were not deleted"


def _merge(wanted: list[tuple[int, str, int]]) -> list[tuple[int, int, list[tuple[int, str, int]]]]:
    """Group live chunks (offset, ref, length), sorted by offset, into ranges to GET: chunks
    less than ``MERGE_GAP`` apart share one request."""
    spans: list[tuple[int, int, list[tuple[int, str, int]]]] = []
    for offset, ref, length in wanted:
        if spans and offset - (spans[-1][0] + spans[-1][1]) < MERGE_GAP:
            start, _, inside = spans[-1]
            inside.append((offset, ref, length))
            spans[-1] = (start, max(spans[-1][1], offset + length - start), inside)
        else:
            spans.append((offset, length, [(offset, ref, length)]))
    return spans


def _checked(
    data: bytes, start: int, inside: list[tuple[int, str, int]], *, limit: int, where: str
) -> list[tuple[int, str, bytes, int]]:
    """Cut each chunk out of ``data`` (the pack's bytes from ``start``), decode it and check its
    hash. Blocking: runs in a worker thread.

    Raises:
        IntegrityError: a chunk's bytes do not decode or do not match its hash.
    """
    out = []
    for offset, ref, length in inside:
        stored = data[offset - start : offset - start + length]
        raw = decode(stored, codec_of_ref(ref), limit=limit, where=f"chunk {ref} in {where}")
        if len(stored) != length or sha256_hex(raw) != digest_of_ref(ref):
            raise IntegrityError(
                f"chunk {ref} in {where} (offset {offset}) is corrupt: its bytes do not match "
                "its hash. Prune stopped before changing any INDEX or deleting any old pack; "
                "run 'asyncbackup verify --deep' to see which backups it damages"
            )
        out.append((offset, ref, bytes(stored), len(raw)))
    return out


async def _in_order(
    items: list[T], fetch: Callable[[T], Awaitable[R]], *, ahead: int
) -> AsyncIterator[tuple[T, R]]:
    """``(item, await fetch(item))`` in the order of ``items``, with up to ``ahead`` fetches
    running at once; the rest are cancelled if the consumer stops or one fails."""
    tasks: dict[int, asyncio.Task[R]] = {}
    try:
        for i, item in enumerate(items):
            for j in range(i, min(i + ahead, len(items))):
                if j not in tasks:
                    tasks[j] = asyncio.ensure_future(fetch(items[j]))
            yield item, await tasks.pop(i)
    finally:
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)


__all__ = ["RepackResult", "Repacker"]
