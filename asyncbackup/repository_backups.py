"""The objects that make a backup: its MANIFEST (listed, read whole or its head, written by
the commit, deleted) and its INDEX, read and written through ``RepositoryBase``'s retried calls.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from asyncbackup import manifest_encoding
from asyncbackup.errors import ManifestError, ManifestTooLarge, NameTakenError, ObjectExistsError
from asyncbackup.errors import ObjectNotFoundError as NotFound
from asyncbackup.layout import (
    BACKUPS,
    index_key,
    manifest_key,
    name_of_manifest_key,
    source_mark_of_key,
)
from asyncbackup.manifest import READABLE_VERSIONS, Manifest
from asyncbackup.manifest_encoding import HEAD_READ
from asyncbackup.manifest_reader import read_manifest
from asyncbackup.packs import PackIndex, read_index
from asyncbackup.repository_base import RepositoryBase
from asyncbackup.retry import Transfer
from asyncbackup.threads import to_thread


class BackupObjects(RepositoryBase):
    """A job's reads and writes of backups' MANIFESTs and INDEXes; ``Repository`` is built on it."""

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
