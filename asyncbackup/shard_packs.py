"""The packs a shard stored, written down as it goes, so that a re-run after a crash reuses
them instead of packing and uploading the same small files again.

```
shards/<name>/<k>.packs    the ids of the packs shard k stored so far (one a line), rewritten
                           after each pack is confirmed stored, and once more before the record
```

The list is a hint, never a source of trust: it only says which packs' trailers are worth a
range GET. A re-run trusts a pack it names only if a listing of ``packs/`` made under the
re-run's own shared lock shows it, and learns what the pack holds from the pack's own trailer
(its key is the sha256 of its bytes, checked by the server on upload; every chunk is checked
against its hash again when a restore cuts it out). A pack that a prune removed before the
re-run is not in the listing: its chunks are stored again. Why no prune can remove a trusted
pack afterwards is argued in docs/design.md, "Shards" (a re-run reuses the packs of the attempt
that died): the re-run's shared lock excludes prune until its record, which names the pack, is
written; from then on prune pins every pack a record names.

A wrong or stale list costs a GET or an upload, nothing else. The list is removed with the
records by ``commit``, and after ``RECORD_EXPIRY`` by prune, like everything under ``shards/``.
"""

from __future__ import annotations

import asyncio
import logging

from asyncbackup.errors import IntegrityError, ObjectNotFoundError
from asyncbackup.layout import PACKS, is_digest, pack_id_of_key, shard_packs_key
from asyncbackup.packs import PackedChunk
from asyncbackup.repository import Repository

log = logging.getLogger("asyncbackup")
Reused = tuple[str, int, list[PackedChunk]]
"""A pack an earlier attempt stored: its id, its size, and the chunks its trailer places."""


class PacksOfShard:
    """The packs of one shard: those it stored (and reused), and the list of them in the
    store, kept up to date by ``note``."""

    def __init__(self, repo: Repository, name: str, index: int) -> None:
        self.repo = repo
        self.key = shard_packs_key(name, index)
        self.ids: list[str] = []
        self.written = 0  # how many of ``ids`` the list in the store names

    def stored(self, pack_id: str) -> None:
        """A pack's upload was confirmed."""
        self.ids.append(pack_id)

    async def note(self) -> None:
        """Rewrite the list in the store if a pack was stored since it was last written."""
        count = len(self.ids)
        if count == self.written:
            return
        data = "".join(f"{pack_id}\n" for pack_id in self.ids[:count]).encode("ascii")
        await self.repo.put_object(self.key, data, action="note the shard's packs")
        self.written = max(self.written, count)

    async def reuse(self, *, concurrency: int) -> list[Reused]:
        """The packs earlier attempts of this shard listed that a listing of ``packs/`` shows
        now, each with the chunks its trailer places: call it under the job's shared lock.
        A pack whose trailer cannot be read is skipped with a WARNING (its chunks are stored
        again)."""
        try:
            data = await self.repo.get_object(self.key, action="read the shard's packs")
        except ObjectNotFoundError:
            return []
        if len(data) > self.repo.manifest_limit:  # not ours: a list of a million packs is 65 MB
            log.warning("%s is %d bytes, over the MANIFEST limit: not read", self.key, len(data))
            return []
        named = dict.fromkeys(w for w in data.decode("ascii", "replace").split() if is_digest(w))
        if not named:
            return []
        sizes: dict[str, int] = {}
        async for page in self.repo.object_pages(PACKS):
            for info in page:
                pack_id = pack_id_of_key(info.key)
                if pack_id in named:
                    sizes[pack_id] = info.size
        room = asyncio.Semaphore(concurrency)
        found: dict[str, Reused] = {}

        async def read(pack_id: str, size: int) -> None:
            async with room:
                try:
                    chunks = await self.repo.read_pack_trailer(pack_id, size)
                except (IntegrityError, ObjectNotFoundError) as exc:
                    log.warning("not reusing pack %s of an earlier attempt: %s", pack_id, exc)
                    return
            found[pack_id] = (pack_id, size, chunks)

        async with asyncio.TaskGroup() as group:
            for pack_id, size in sizes.items():
                group.create_task(read(pack_id, size))
        reused = [found[p] for p in named if p in found]
        gone = len(named) - len(sizes)
        log.info(
            "a re-run: reusing %d packs (%d chunks) an earlier attempt stored%s",
            len(reused), sum(len(c) for _, _, c in reused),
            f"; {gone} it listed are gone (pruned), their chunks are stored again" if gone else "",
        )  # fmt: skip
        self.ids = [pack_id for pack_id, _, _ in reused]
        self.written = len(self.ids)  # the list in the store names them already
        return reused
