"""The repository format on a store: chunks and manifests, every call through the retry layer.

Chunks and packs here; a backup's MANIFEST and INDEX in ``repository_backups.py``; the retried
listings and object calls under both in ``repository_base.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from asyncbackup.chunking import sha256_hex
from asyncbackup.compression import Codec, codec_of_ref, decode
from asyncbackup.errors import IntegrityError
from asyncbackup.layout import (
    CHUNKS,
    PACKS,
    chunk_key,
    digest_of_ref,
    pack_id_of_key,
    pack_key,
    ref_of_chunk_key,
)
from asyncbackup.packs import TAIL_READ, Pack, PackedChunk, Place, parse_trailer, trailer_length
from asyncbackup.repository_backups import BackupObjects
from asyncbackup.retry import Transfer
from asyncbackup.threads import to_thread

_HASH_INLINE_LIMIT = 64 * 1024  # below this, a thread hop costs more than hashing on the loop


def _decode_and_hash(stored: bytes, codec: Codec, limit: int, where: str) -> tuple[bytes, str]:
    data = decode(stored, codec, limit=limit, where=where)
    return data, sha256_hex(data)


class Repository(BackupObjects):
    """One job's view of a store: what it holds, and retried reads and writes of its objects.

    ``guard`` runs before every attempt of a destructive or committing call (a delete, the
    MANIFEST's sync and write): a job's repository lock installs its own, which raises
    ``LockError`` once the lock can no longer be trusted (see ``locks.py``).
    """

    async def stored_refs(self, *, on_page: Callable[[int], None] | None = None) -> set[str]:
        """The chunks the store holds, by ref (codec suffix included): one listing, never a
        request per chunk. ``on_page`` is told how many were listed so far, after each page."""
        refs: set[str] = set()
        async for page in self._pages(CHUNKS, self.store.list_page):
            refs.update(r for r in map(ref_of_chunk_key, page) if r is not None)
            if on_page is not None:
                on_page(len(refs))
        return refs

    async def put_chunk(
        self, ref: str, data: bytes, *, data_sha256: str, path: str, label: str
    ) -> None:
        """Store one chunk, as encoded, under ``ref``; retried, and harmless to repeat.

        ``data_sha256`` is the hash of ``data`` as stored (for a compressed chunk, not the raw
        chunk's): S3 sends it as the object's checksum, and refuses bytes that do not match.
        """
        what = Transfer(self.operation, "upload", path, label, nbytes=len(data))
        key = chunk_key(ref)
        await self.retrier.run(what, lambda: self.store.put(key, data, digest=data_sha256))

    async def probe_chunk(self, ref: str, *, place: Place | None = None) -> None:
        """Check that chunk ``ref`` is in the store: one range GET of its first byte (in its
        pack, at ``place``, if it is packed), retried.

        Raises:
            ObjectNotFoundError: it is not.
        """
        if place is not None:
            await self.read_pack(place.pack, place.offset, 1, label=f"check {ref[:12]}")
            return
        key = chunk_key(ref)
        what = Transfer(self.operation, "check", key)
        await self.retrier.run(what, lambda: self.store.get_range(key, 0, 1))

    async def get_chunk(
        self, ref: str, *, limit: int, path: str, label: str, size: int = 0
    ) -> bytes:
        """Fetch one chunk, decode it (to at most ``limit`` bytes) and check its raw hash.
        ``size``, the length the manifest expects, is what each attempt pays to a bandwidth
        limit (the raw length: a compressed chunk's is not known before it arrives, so a
        restore of one stays under the limit with room to spare).

        Raises:
            IntegrityError: the stored bytes do not decode, or do not hash to the ref's digest.
            ObjectNotFoundError: the chunk is missing from the store.
        """
        what = Transfer(self.operation, "download", path, label, nbytes=size)
        key = chunk_key(ref)
        stored = await self.retrier.run(what, lambda: self.store.get(key))
        where = f"chunk {key} of {path}"
        codec = codec_of_ref(ref)
        if codec == "none" and len(stored) <= _HASH_INLINE_LIMIT:
            data, digest = stored, sha256_hex(stored)
        else:  # decoding and hashing in one trip to a worker thread
            data, digest = await to_thread(_decode_and_hash, stored, codec, limit, where)
        if digest != digest_of_ref(ref):
            raise IntegrityError(
                f"{where} is corrupt in {self.store.url}: its bytes do not match its hash; "
                "restore an older backup, or back up the source again"
            )
        return data

    async def put_pack(self, pack: Pack, *, label: str) -> None:
        """Store one pack: one transfer, one retry unit, its sha256 sent as the checksum, so
        bytes damaged in transit are refused by the server and sent again. Harmless to repeat:
        its key is the hash of its bytes."""
        path = f"pack {pack.pack_id[:12]}"
        what = Transfer(self.operation, "upload", path, label, nbytes=len(pack.data))
        key = pack_key(pack.pack_id)
        await self.retrier.run(what, lambda: self.store.put(key, pack.data, digest=pack.pack_id))

    async def read_pack(
        self, pack_id: str, start: int, length: int, *, whole: bool = False, label: str = ""
    ) -> bytes:
        """``length`` bytes of pack ``pack_id`` from ``start`` (one range GET), or with
        ``whole`` the whole pack (one GET), retried.

        Raises:
            ObjectNotFoundError: the pack is not in the store (a prune may have repacked it:
                ``packread.py`` then reads the backup's INDEX again).
        """
        key = pack_key(pack_id)
        what = Transfer(self.operation, "download", key, label, nbytes=length)
        if whole:
            return await self.retrier.run(what, lambda: self.store.get(key))
        return await self.retrier.run(what, lambda: self.store.get_range(key, start, length))

    async def read_pack_trailer(self, pack_id: str, size: int) -> list[PackedChunk]:
        """What pack ``pack_id`` (of ``size`` bytes) holds, from its trailer: one range GET of
        its last bytes, a second one only for a trailer larger than ``TAIL_READ``.

        Raises:
            IntegrityError: the pack's end is not a pack's trailer.
            ObjectNotFoundError: the pack is not in the store.
        """
        where = f"{self.store.url}/{pack_key(pack_id)}"
        start = max(0, size - TAIL_READ)
        tail = await self.read_pack(pack_id, start, size - start, label="trailer")
        length = trailer_length(tail, size, where=where)
        if length + 8 <= len(tail):
            trailer = tail[len(tail) - 8 - length : len(tail) - 8]
        else:
            trailer = await self.read_pack(pack_id, size - 8 - length, length, label="trailer")
        return await to_thread(parse_trailer, trailer, size, where=where)

    async def pack_ids(self) -> set[str]:
        """Every pack in the store, by id: one listing of ``packs/``."""
        return {p for p in map(pack_id_of_key, await self.list_keys(PACKS)) if p is not None}
