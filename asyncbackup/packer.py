"""Filling packs during a backup: small chunks gathered, each full pack stored as one transfer.

A backup hands every chunk whose encoded size is under ``pack_threshold`` to ``Packer.add``
instead of storing it as an object of its own. Chunks are appended to the open pack; the task
whose chunk fills it (``pack_size`` bytes or more) builds the pack in a worker thread (bytes
end to end, trailer, sha256) and stores it with ``Repository.put_pack``: one slot of the pool,
one retry unit, one backoff, its checksum checked by the server, exactly as one chunk was. Only
once that PUT is confirmed is each of its chunks reported stored (``on_stored``); the backup
names nothing in its MANIFEST that was not confirmed, so a pack that never lands is never
committed. ``flush`` stores the last, partly filled pack.

Memory: the open pack (under ``pack_size`` plus one chunk under ``pack_threshold``), plus at
most ``max_in_flight`` packs being stored; a task whose chunk would overflow that waits, so the
reading of small files slows to the pace of the uploads instead of piling packs up in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from asyncbackup.errors import ManifestError
from asyncbackup.layout import BACKUPS, INDEX, name_of_manifest_key, source_mark_of_key
from asyncbackup.packs import Pack, PackIndex, build_pack
from asyncbackup.repository import Repository
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
OnStored = Callable[[Pack], None]
"""Told of each pack once its upload is confirmed: its chunks may now be named."""
PACK_MEMORY = 128 * 1024 * 1024
"""Bytes of packs being stored at once, at most (but never fewer than two packs)."""


class Packer:
    """The open pack of one backup job, and the packs it is storing."""

    def __init__(
        self,
        repo: Repository,
        *,
        pack_size: int,
        concurrency: int,
        on_stored: OnStored,
    ) -> None:
        self.repo = repo
        self.pack_size = pack_size
        self.max_in_flight = max(2, min(concurrency, PACK_MEMORY // pack_size))
        self.on_stored = on_stored
        self.packs_stored = 0
        self._open: list[tuple[str, bytes, int]] = []
        self._open_bytes = 0
        self._in_flight = 0
        self._changed = asyncio.Condition()

    async def add(self, ref: str, stored: bytes, raw_length: int) -> None:
        """Put chunk ``ref`` (its bytes as stored, and their length decoded) in the open pack;
        if that fills it, store the pack before returning.

        Raises:
            StorageError: the pack this chunk filled could not be stored (after retries).
        """
        async with self._changed:
            await self._changed.wait_for(lambda: self._open_bytes < self.pack_size)
            self._open.append((ref, stored, raw_length))
            self._open_bytes += len(stored)
            if self._open_bytes < self.pack_size:
                return
            await self._changed.wait_for(lambda: self._in_flight < self.max_in_flight)
            chunks = self._take()
        await self._store(chunks)

    async def flush(self) -> None:
        """Store the open pack, if it holds anything: once every ``add`` has returned.

        Raises:
            StorageError: it could not be stored (after retries).
        """
        async with self._changed:
            chunks = self._take() if self._open else []
        if chunks:
            await self._store(chunks)

    def _take(self) -> list[tuple[str, bytes, int]]:
        """The open pack's chunks, handed to the caller to store; a new pack is open."""
        chunks, self._open, self._open_bytes = self._open, [], 0
        self._in_flight += 1
        self._changed.notify_all()
        return chunks

    async def _store(self, chunks: list[tuple[str, bytes, int]]) -> None:
        try:
            pack = await to_thread(build_pack, chunks)  # 16 MiB hashed: never on the loop
            chunks.clear()  # the pack holds the bytes now: not twice in memory
            label = f"{len(pack.chunks)} chunks, {len(pack.data)} bytes"
            await self.repo.put_pack(pack, label=label)
            self.packs_stored += 1
            log.debug("stored pack %s (%s)", pack.pack_id, label)
            self.on_stored(pack)
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()


async def places_of(repo: Repository, names: Iterable[str], *, listed: set[str]) -> PackIndex:
    """What a first backup may take as stored in packs: the places the INDEXes of backups
    ``names`` (the newest of each host and source) give, in packs that ``listed`` (a listing of
    ``packs/`` taken under the backup's shared lock, so none of them can go before it commits)
    holds. An INDEX that cannot be read is skipped with a WARNING: its chunks are uploaded
    again, which costs requests, never correctness."""
    found = PackIndex()

    async def read(name: str) -> None:
        try:
            index = await repo.load_index(name)
        except ManifestError as exc:
            log.warning("packed chunks of backup %s are not reused: %s", name, exc)
            return
        for ref, place in index.places.items():
            if place.pack in listed:
                found.add(ref, place, index.pack_sizes[place.pack])

    async with asyncio.TaskGroup() as group:
        for name in names:
            group.create_task(read(name))
    return found


async def packed_elsewhere(repo: Repository) -> PackIndex:
    """What a backup without a trusted parent (a first backup of its host and source,
    ``--force``, a stream) may take as stored in packs: the places given by the INDEX of the
    newest committed backup of each host and source, in packs a listing of ``packs/`` shows.

    Which backups: one listing of ``backups/`` names each backup's MANIFEST (committed), its
    INDEX (it packed chunks) and its source mark (host and source hashed, and its finish time:
    ``layout.source_mark_key``), so no MANIFEST head is read. A backup without a mark (an older
    version's) counts as a group of its own. Cost: ``B/1000 + P/1000`` listing pages and one
    GET per group that packed (``B`` backups, ``P`` packs); docs/design.md, "Packs".
    """
    committed: set[str] = set()
    indexed: set[str] = set()
    marks: dict[str, tuple[str, str]] = {}  # name -> (group, finish stamp)
    async for page in repo.object_pages(BACKUPS):
        for info in page:
            name = name_of_manifest_key(info.key)
            if name is not None:
                committed.add(name)
            elif (mark := source_mark_of_key(info.key)) is not None:
                marks[mark[0]] = max(marks.get(mark[0], mark[1:]), mark[1:])
            elif info.key.endswith("/" + INDEX) and info.key.count("/") == 2:
                indexed.add(info.key.split("/")[1])
    newest: dict[str, tuple[str, str]] = {}  # group -> (stamp, name)
    for name in committed & indexed:
        group, stamp = marks.get(name, (f"unmarked {name}", ""))
        newest[group] = max(newest.get(group, (stamp, name)), (stamp, name))
    if not newest:
        return PackIndex()
    listed = await repo.pack_ids()
    names = sorted(name for _, name in newest.values())
    found = await places_of(repo, names, listed=listed)
    log.info(
        "backup: %d packed chunks in %d packs, from the INDEX of %d backups",
        len(found), len(found.pack_sizes), len(names),
    )  # fmt: skip
    return found
