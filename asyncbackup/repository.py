"""The repository format on a store: chunks and manifests, every call through the retry layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from asyncbackup import manifest_encoding
from asyncbackup.chunking import sha256_hex
from asyncbackup.compression import Codec, codec_of_ref, decode
from asyncbackup.config import DEFAULT_MAX_MANIFEST_SIZE
from asyncbackup.errors import (
    IntegrityError,
    ManifestError,
    ManifestTooLarge,
    NameTakenError,
    ObjectExistsError,
)
from asyncbackup.errors import ObjectNotFoundError as NotFound
from asyncbackup.layout import (
    BACKUPS,
    CHUNKS,
    PACKS,
    chunk_key,
    digest_of_ref,
    index_key,
    manifest_key,
    name_of_manifest_key,
    pack_id_of_key,
    pack_key,
    ref_of_chunk_key,
    source_mark_of_key,
)
from asyncbackup.manifest import READABLE_VERSIONS, Manifest
from asyncbackup.manifest_encoding import HEAD_READ
from asyncbackup.manifest_reader import read_manifest
from asyncbackup.packs import (
    TAIL_READ,
    Pack,
    PackedChunk,
    PackIndex,
    Place,
    parse_trailer,
    read_index,
    trailer_length,
)
from asyncbackup.retry import Retrier, Transfer
from asyncbackup.storage.base import ObjectInfo, Storage
from asyncbackup.threads import to_thread

T = TypeVar("T")
Fetch = Callable[[str, str | None], Awaitable[tuple[list[T], str | None]]]
"""One page of a listing: (prefix, token) -> (items, next token)."""
_HASH_INLINE_LIMIT = 64 * 1024  # below this, a thread hop costs more than hashing on the loop


def _decode_and_hash(stored: bytes, codec: Codec, limit: int, where: str) -> tuple[bytes, str]:
    data = decode(stored, codec, limit=limit, where=where)
    return data, sha256_hex(data)


def _unguarded() -> None:
    """The guard of a job that holds no lock: nothing to check."""


class Repository:
    """One job's view of a store: what it holds, and retried reads and writes of its objects.

    ``guard`` runs before every attempt of a destructive or committing call (a delete, the
    MANIFEST's sync and write): a job's repository lock installs its own, which raises
    ``LockError`` once the lock can no longer be trusted (see ``locks.py``).
    """

    def __init__(
        self,
        store: Storage,
        retrier: Retrier,
        *,
        operation: str,
        manifest_limit: int = DEFAULT_MAX_MANIFEST_SIZE,
    ) -> None:
        self.store = store
        self.retrier = retrier
        self.operation = operation
        self.manifest_limit = manifest_limit
        self.guard: Callable[[], None] = _unguarded

    def _guarded(self, call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        async def attempt() -> T:
            self.guard()  # each attempt: a retry may come long after the first try
            return await call()

        return attempt

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, one retried request per listing page."""
        return await self._all_pages(prefix, self.store.list_page)

    def object_pages(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        """The objects under ``prefix``, with their sizes and ages, a page at a time (each page
        one retried request), so a caller need not hold a listing of a million chunks."""
        return self._pages(prefix, self.store.list_objects)

    async def _all_pages(self, prefix: str, fetch: Fetch[T]) -> list[T]:
        return [item async for page in self._pages(prefix, fetch) for item in page]

    async def _pages(self, prefix: str, fetch: Fetch[T]) -> AsyncIterator[list[T]]:
        token: str | None = None
        page = 1
        while True:
            what = Transfer(self.operation, "list", prefix, f"page {page}")
            batch, token = await self.retrier.run(what, partial(fetch, prefix, token))
            yield batch
            if token is None:
                return
            page += 1

    async def stored_refs(self, *, on_page: Callable[[int], None] | None = None) -> set[str]:
        """The chunks the store holds, by ref (codec suffix included): one listing, never a
        request per chunk. ``on_page`` is told how many were listed so far, after each page."""
        refs: set[str] = set()
        async for page in self._pages(CHUNKS, self.store.list_page):
            refs.update(r for r in map(ref_of_chunk_key, page) if r is not None)
            if on_page is not None:
                on_page(len(refs))
        return refs

    async def backup_names(self) -> list[str]:
        """The names of every committed backup, sorted."""
        keys = await self.list_keys(BACKUPS)
        return sorted(n for n in map(name_of_manifest_key, keys) if n is not None)

    async def backup_sizes(self) -> dict[str, int]:
        """Every committed backup's name and the size of its MANIFEST as stored."""
        sizes: dict[str, int] = {}
        async for page in self._pages(BACKUPS, self.store.list_objects):
            for info in page:
                name = name_of_manifest_key(info.key)
                if name is not None:
                    sizes[name] = info.size
        return sizes

    async def has_backup(self, name: str) -> bool:
        key = manifest_key(name)
        return key in await self.list_keys(key)

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

    async def put_index(self, name: str, index: PackIndex) -> None:
        """Write backup ``name``'s INDEX (overwriting one a failed run of it left), retried.
        A backup writes it after every pack it names is stored, before its MANIFEST."""
        data = await to_thread(index.encode, name)
        key = index_key(name)
        what = Transfer(self.operation, "write index", key, nbytes=len(data))
        await self.retrier.run(what, self._guarded(lambda: self.store.put(key, data)))

    async def load_index(self, name: str) -> PackIndex:
        """Backup ``name``'s INDEX: where each packed chunk it names lies. At most
        ``manifest_limit`` bytes are read, and as many decompressed.

        Raises:
            ManifestError: the INDEX is missing, corrupt or too large.
        """
        key = index_key(name)
        where = f"{self.store.url}/{key}"
        what = Transfer(self.operation, "read index", key)
        try:
            data = await self.retrier.run(what, lambda: self.store.get(key))
        except NotFound:
            raise ManifestError(
                f"{where} is missing: backup {name} names packed chunks, and without its INDEX "
                "they cannot be found; restore another backup, or back up the source again"
            ) from None
        if len(data) > self.manifest_limit:
            raise ManifestError(f"{where} is {len(data):,} bytes, over --max-manifest-size")
        return await read_index(data, where=where, limit=self.manifest_limit)

    async def load_manifest(self, name: str, *, size: int | None = None) -> Manifest:
        """Read and validate backup ``name``'s MANIFEST, if it is no larger than
        ``manifest_limit``: its size as listed (``size``, if the caller listed it already) is
        checked before it is fetched, and its length again once fetched.

        Raises:
            ManifestTooLarge: the MANIFEST is over the limit; it was not read.
            ManifestError: there is no such backup, or its MANIFEST is corrupt or unsafe.
        """
        key = manifest_key(name)
        where = f"{self.store.url}/{key}"
        missing = ManifestError(
            f"no backup named {name!r} in {self.store.url}: 'asyncbackup list' shows them"
        )
        if size is None:
            what = Transfer(self.operation, "list", key)
            listed, _ = await self.retrier.run(what, partial(self.store.list_objects, key, None))
            sizes = [o.size for o in listed if o.key == key]
            if not sizes:
                raise missing
            size = sizes[0]
        self._check_manifest_size(size, where)
        what = Transfer(self.operation, "read manifest", key)
        try:
            data = await self.retrier.run(what, lambda: self.store.get(key))
        except NotFound:
            raise missing from None
        self._check_manifest_size(len(data), where)  # replaced since it was listed
        # In bounded worker-thread trips: parsing 100,000 entries never stalls the loop.
        return await read_manifest(data, where=where, limit=self.manifest_limit)

    def _check_manifest_size(self, size: int, where: str) -> None:
        if size > self.manifest_limit:
            raise ManifestTooLarge(
                f"{where}: the MANIFEST is {size:,} bytes, over the limit of "
                f"{self.manifest_limit:,} bytes; if the backup really is that large, raise the "
                "limit (--max-manifest-size, EngineConfig.max_manifest_size), else the file "
                "was written by someone else: delete that backup"
            )

    async def read_head(self, name: str, *, size: int | None = None) -> dict[str, Any]:
        """Backup ``name``'s MANIFEST head (times, host, source, totals, tags), from one range
        request of its first bytes; a MANIFEST whose head does not fit them is read whole.

        Raises:
            ManifestTooLarge: its size as listed (``size``) is over the limit; it was not read.
            ManifestError: there is no such backup, or its MANIFEST is corrupt.
        """
        key = manifest_key(name)
        if size is not None:  # a MANIFEST no restore would read is no backup to list either
            self._check_manifest_size(size, f"{self.store.url}/{key}")
        what = Transfer(self.operation, "read manifest head", key)
        try:
            prefix = await self.retrier.run(what, lambda: self.store.get_range(key, 0, HEAD_READ))
        except NotFound:
            raise ManifestError(
                f"no backup named {name!r} in {self.store.url}: 'asyncbackup list' shows them"
            ) from None
        head = manifest_encoding.head_of(prefix)  # one small frame: microseconds
        if head is None or head.get("format_version") not in READABLE_VERSIONS:
            # Refused clearly if it is bad, or too large (``size``: as listed, if known).
            return (await self.load_manifest(name, size=size)).head()
        return head

    async def commit(self, manifest: Manifest) -> None:
        """Make every chunk durable, then write the MANIFEST, create-only: the backup's commit.

        Raises:
            NameTakenError: another job committed a backup of the same name meanwhile.
        """
        sync = Transfer(self.operation, "sync", self.store.url)
        await self.retrier.run(sync, self._guarded(self.store.sync))
        key = manifest_key(manifest.name)
        data = await to_thread(manifest.to_bytes)
        what = Transfer(self.operation, "commit", key, nbytes=len(data))
        try:
            await self.retrier.run(
                what, self._guarded(lambda: self.store.put(key, data, overwrite=False))
            )
        except ObjectExistsError:
            # An attempt that failed after it stored the MANIFEST leaves it in place for the
            # retry to find: if it is ours, the backup is committed, exactly once.
            theirs = await self.load_manifest(manifest.name)
            if theirs.job_id != manifest.job_id:
                raise NameTakenError(
                    f"another job committed a backup named {manifest.name!r} while this one ran; "
                    "run again with another --name (the chunks uploaded will be reused)"
                ) from None

    async def delete_object(self, key: str, *, guarded: bool = True) -> None:
        """Remove ``key``, retried; a key already gone is not an error. Each attempt passes the
        job's ``guard`` first, unless ``guarded`` is False (a lock removing itself).

        Raises:
            LockError: the job's lock can no longer be trusted; nothing more is deleted.
        """
        call = lambda: self.store.delete(key)  # noqa: E731
        what = Transfer(self.operation, "delete", key)
        await self.retrier.run(what, self._guarded(call) if guarded else call)

    async def get_object(self, key: str, *, action: str) -> bytes:
        """The bytes of ``key``, retried.

        Raises:
            ObjectNotFoundError: no such key.
        """
        return await self.retrier.run(
            Transfer(self.operation, action, key), lambda: self.store.get(key)
        )

    async def put_object(
        self, key: str, data: bytes, *, action: str, guarded: bool = False
    ) -> None:
        """Store ``data`` under ``key`` (overwriting), retried; a small object (a lock), so
        it pays nothing to a bandwidth limit, which caps the data. With ``guarded``, each
        attempt passes the job's ``guard`` first (a shard record, which commits a shard)."""
        what = Transfer(self.operation, action, key)
        call = lambda: self.store.put(key, data)  # noqa: E731
        await self.retrier.run(what, self._guarded(call) if guarded else call)

    async def delete_manifest(self, name: str) -> None:
        """Remove backup ``name``'s MANIFEST: the backup is gone, its chunks stay for others.

        Raises:
            ManifestError: there is no such backup.
        """
        if not await self.has_backup(name):
            raise ManifestError(
                f"no backup named {name!r} in {self.store.url}: 'asyncbackup list' shows them"
            )
        await self.delete_object(manifest_key(name))
        await self.delete_object(index_key(name))  # after: a MANIFEST never lacks its INDEX
        for key in await self.list_keys(f"{BACKUPS}{name}/"):  # its mark (catalog.find_newest)
            if source_mark_of_key(key) is not None:
                await self.delete_object(key)
