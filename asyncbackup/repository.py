"""The repository format on a store: chunks and manifests, every call through the retry layer."""

from __future__ import annotations

import asyncio
from functools import partial

from asyncbackup.chunking import sha256_hex
from asyncbackup.errors import ConfigError, IntegrityError, ManifestError, ObjectExistsError
from asyncbackup.errors import ObjectNotFoundError as NotFound
from asyncbackup.layout import (
    BACKUPS,
    CHUNKS,
    chunk_key,
    digest_of_chunk_key,
    manifest_key,
    name_of_manifest_key,
)
from asyncbackup.manifest import Manifest
from asyncbackup.retry import Retrier, Transfer
from asyncbackup.storage.base import Storage

_HASH_INLINE_LIMIT = 64 * 1024  # below this, a thread hop costs more than hashing on the loop


async def digest_of(data: bytes) -> str:
    """sha256 of ``data``, in a worker thread unless it is small."""
    if len(data) <= _HASH_INLINE_LIMIT:
        return sha256_hex(data)
    return await asyncio.to_thread(sha256_hex, data)


class Repository:
    """One job's view of a store: what it holds, and retried reads and writes of its objects."""

    def __init__(self, store: Storage, retrier: Retrier, *, operation: str) -> None:
        self.store = store
        self.retrier = retrier
        self.operation = operation

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, one retried request per listing page."""
        keys: list[str] = []
        token: str | None = None
        page = 1
        while True:
            what = Transfer(self.operation, "list", prefix, f"page {page}")
            batch, token = await self.retrier.run(
                what, partial(self.store.list_page, prefix, token)
            )
            keys.extend(batch)
            if token is None:
                return keys
            page += 1

    async def stored_digests(self) -> set[str]:
        """The chunks the store holds: one listing, never a request per chunk."""
        keys = await self.list_keys(CHUNKS)
        return {d for d in map(digest_of_chunk_key, keys) if d is not None}

    async def backup_names(self) -> list[str]:
        """The names of every committed backup, sorted."""
        keys = await self.list_keys(BACKUPS)
        return sorted(n for n in map(name_of_manifest_key, keys) if n is not None)

    async def has_backup(self, name: str) -> bool:
        key = manifest_key(name)
        return key in await self.list_keys(key)

    async def put_chunk(self, digest: str, data: bytes, *, path: str, label: str) -> None:
        """Store one chunk; retried, and harmless to repeat (same key, same bytes)."""
        what = Transfer(self.operation, "upload", path, label, nbytes=len(data))
        await self.retrier.run(what, lambda: self.store.put(chunk_key(digest), data, digest=digest))

    async def get_chunk(self, digest: str, *, path: str, label: str, size: int = 0) -> bytes:
        """Fetch one chunk and check its hash. ``size``, the length the manifest expects, is what
        each attempt pays to a bandwidth limit.

        Raises:
            IntegrityError: the stored bytes do not hash to ``digest``.
            ObjectNotFoundError: the chunk is missing from the store.
        """
        what = Transfer(self.operation, "download", path, label, nbytes=size)
        key = chunk_key(digest)
        data = await self.retrier.run(what, lambda: self.store.get(key))
        if await digest_of(data) != digest:
            raise IntegrityError(
                f"chunk {key} of {path} is corrupt in {self.store.url}: its bytes do not match "
                "its hash; restore an older backup, or back up the source again"
            )
        return data

    async def load_manifest(self, name: str) -> Manifest:
        """Read and validate backup ``name``'s MANIFEST.

        Raises:
            ManifestError: there is no such backup, or its MANIFEST is corrupt or unsafe.
        """
        key = manifest_key(name)
        what = Transfer(self.operation, "read manifest", key)
        try:
            data = await self.retrier.run(what, lambda: self.store.get(key))
        except NotFound:
            raise ManifestError(
                f"no backup named {name!r} in {self.store.url}: 'asyncbackup list' shows them"
            ) from None
        return await asyncio.to_thread(Manifest.from_json, data, where=f"{self.store.url}/{key}")

    async def commit(self, manifest: Manifest) -> None:
        """Make every chunk durable, then write the MANIFEST, create-only: the backup's commit.

        Raises:
            ConfigError: another job committed a backup of the same name meanwhile.
        """
        await self.retrier.run(Transfer(self.operation, "sync", self.store.url), self.store.sync)
        key = manifest_key(manifest.name)
        data = await asyncio.to_thread(manifest.to_json)
        what = Transfer(self.operation, "commit", key, nbytes=len(data))
        try:
            await self.retrier.run(what, lambda: self.store.put(key, data, overwrite=False))
        except ObjectExistsError:
            # An attempt that failed after it stored the MANIFEST leaves it in place for the
            # retry to find: if it is ours, the backup is committed, exactly once.
            theirs = await self.load_manifest(manifest.name)
            if theirs.job_id != manifest.job_id:
                raise ConfigError(
                    f"another job committed a backup named {manifest.name!r} while this one ran; "
                    "run again with another --name (the chunks uploaded will be reused)"
                ) from None

    async def delete_manifest(self, name: str) -> None:
        """Remove backup ``name``'s MANIFEST: the backup is gone, its chunks stay for others.

        Raises:
            ManifestError: there is no such backup.
        """
        if not await self.has_backup(name):
            raise ManifestError(
                f"no backup named {name!r} in {self.store.url}: 'asyncbackup list' shows them"
            )
        key = manifest_key(name)
        await self.retrier.run(
            Transfer(self.operation, "delete", key), lambda: self.store.delete(key)
        )
