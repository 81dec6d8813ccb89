"""``verify``: whether one backup, or every backup in a store, would restore.

Without ``deep``, one listing of ``chunks/`` shows whether every chunk named is there. With
``deep``, every chunk is downloaded and its hash checked, and every file's whole size and sha256
is computed from its chunks, in order, exactly as a restore checks it before it puts the file in
place, so a MANIFEST that names the wrong (if intact) chunk for a file is caught. Nothing is
written anywhere.

Each chunk is read once: a file that recurs unchanged in several backups is checked once, and a
chunk that several files use is held in memory between its uses (``reuse.py``, within
``concurrency x chunk_size`` bytes; past that, it is read again).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from functools import partial

from asyncbackup.budget import ByteBudget
from asyncbackup.config import EngineConfig
from asyncbackup.errors import BackupError, IntegrityError, ManifestError, ObjectNotFoundError
from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import PACKED_FORMAT_VERSION, FileEntry, Manifest
from asyncbackup.packread import ChunkSource
from asyncbackup.packs import PackIndex
from asyncbackup.pool import TaskPool
from asyncbackup.progress import NoProgress, Progress, expect
from asyncbackup.repository import Repository
from asyncbackup.reuse import SharedChunks
from asyncbackup.threads import to_thread

OPERATION = "verify"


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: chunks missing or corrupt (each with the files that need it),
    files whose chunks do not add up to the size and sha256 recorded (each with why), and
    backups whose MANIFEST cannot be read. ``name`` is the backup verified, or "" for all."""

    name: str
    deep: bool
    chunks_checked: int
    missing: dict[str, list[str]] = field(default_factory=dict)
    corrupt: dict[str, list[str]] = field(default_factory=dict)
    bad_files: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    packs: dict[str, str] = field(default_factory=dict)  # missing or corrupt ref -> its pack
    backups: tuple[str, ...] = ()
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.bad_files or self.unreadable)


@dataclass
class _File:
    """One distinct file content (its chunks, size and sha256), and where backups hold it."""

    entry: FileEntry
    chunk_size: int
    users: list[str]

    def expected(self, index: int) -> int:
        return min(self.chunk_size, self.entry.size - index * self.chunk_size)


class VerifyJob:
    """Verifies the backups ``names`` (every backup when None)."""

    def __init__(
        self, repo: Repository, config: EngineConfig, progress: Progress | None = None
    ) -> None:
        self.repo = repo
        self.config = config
        self.progress: Progress = progress if progress is not None else NoProgress()
        self.files: dict[tuple[object, ...], _File] = {}
        self.users: dict[str, list[str]] = {}  # ref -> the files that need it
        self.failed: dict[str, BackupError] = {}  # ref -> why it could not be read
        self.bad_files: dict[str, str] = {}
        self.shared = SharedChunks((), budget=ByteBudget(1))
        self.index = PackIndex()  # where the packed chunks of every backup verified lie
        self.indexed: list[str] = []  # the backups whose INDEX that is
        self.source = ChunkSource(repo, self.index)

    async def run(self, name: str | None, *, deep: bool) -> VerifyReport:
        """Check backup ``name`` (or all); damage is reported, not raised.

        Raises:
            ManifestError: ``name`` is given and there is no such backup, or its MANIFEST
                cannot be read.
            BackupFailed: the store failed.
        """
        unreadable: dict[str, str] = {}
        if name is not None:
            names = [name]
            manifest = await self.repo.load_manifest(name)
            await self._add_index(manifest)
            await to_thread(self._add, manifest, "")  # 100,000 entries: not on the loop
        else:
            sizes = await self.repo.backup_sizes()
            names = sorted(sizes)
            for each in names:
                try:
                    manifest = await self.repo.load_manifest(each, size=sizes[each])
                    await self._add_index(manifest)
                except ManifestError as exc:
                    unreadable[each] = str(exc)
                    continue
                await to_thread(self._add, manifest, f"{each}:")
        stored = await self.repo.stored_refs()
        if self.index:  # a packed chunk is there if its pack is
            packs = await self.repo.pack_ids()
            stored |= {r for r, p in self.index.places.items() if p.pack in packs}
        missing = {ref: users for ref, users in self.users.items() if ref not in stored}
        corrupt: dict[str, list[str]] = {}
        if deep:
            await self._read_everything(set(missing))
            for ref, error in self.failed.items():
                kind = missing if isinstance(error, ObjectNotFoundError) else corrupt
                kind[ref] = self.users[ref]
        return VerifyReport(
            name=name or "",
            deep=deep,
            chunks_checked=len(self.users),
            missing=missing,
            corrupt=corrupt,
            bad_files=self.bad_files,
            unreadable=unreadable,
            backups=tuple(names),
            packs={
                ref: place.pack
                for ref in (*missing, *corrupt)
                if (place := self.index.get(ref)) is not None
            },
            files_checked=len(self.files),
        )

    async def _add_index(self, manifest: Manifest) -> None:
        """Take in where the packed chunks of ``manifest`` lie (its INDEX, if it has one).

        Raises:
            ManifestError: its INDEX is missing or corrupt.
        """
        if manifest.format_version >= PACKED_FORMAT_VERSION:
            self.index.update(await self.repo.load_index(manifest.name))
            self.indexed.append(manifest.name)

    def _add(self, manifest: Manifest, prefix: str) -> None:
        for entry in manifest.entries:
            if entry.type != "file":
                continue
            label = f"{prefix}{entry.path}"
            key = (entry.size, entry.sha256, entry.chunks, manifest.chunk_size)
            known = self.files.get(key)
            if known is None:
                self.files[key] = _File(entry, manifest.chunk_size, [label])
            else:  # the same content in another backup (or path): checked once
                known.users.append(label)
            for ref in entry.chunks:
                users = self.users.setdefault(ref, [])
                if not users or users[-1] != label:
                    users.append(label)

    async def _read_everything(self, missing: set[str]) -> None:
        files = list(self.files.values())

        def count_uses() -> SharedChunks:  # a million refs: counted off the event loop
            refs = (ref for f in files for ref in f.entry.chunks if ref not in missing)
            largest = max((f.chunk_size for f in files), default=0)
            return SharedChunks(refs, budget=ByteBudget(max(1, self.config.concurrency * largest)))

        self.shared = await to_thread(count_uses)
        budget = self.config.buffer_budget  # pack segments, as much again as chunk buffers
        self.source = ChunkSource(self.repo, self.index, names=self.indexed, budget=budget)
        plan = [ref for f in files for ref in f.entry.chunks if ref not in missing]
        await to_thread(self.source.plan, plan)  # by pack: whole, or merged ranges
        for ref in missing:
            place = self.index.get(ref)
            key = f"chunks/{ref}" if place is None else f"packs/{place.pack} (chunk {ref})"
            self.failed[ref] = ObjectNotFoundError(f"{key} is missing")
        sizes: dict[str, int] = {}  # what each chunk to read weighs: the bar's total
        for file in files:
            for index, ref in enumerate(file.entry.chunks):
                if ref not in missing:
                    sizes.setdefault(ref, file.expected(index))
        expect(self.progress, files=len(files), nbytes=sum(sizes.values()))
        async with TaskPool(OPERATION, limit=self.config.buffered_chunks) as pool:
            for file in files:
                if len(file.entry.chunks) <= 1:
                    await pool.spawn(file.entry.path, partial(self._check_small, file))
            for file in files:  # in order, with a window of chunks fetched ahead
                if len(file.entry.chunks) > 1:
                    await self._check_large(file)

    async def _chunk(self, file: _File, index: int) -> bytes | None:
        """Chunk ``index`` of ``file``, hash-checked; None (and recorded) if it cannot be read."""
        ref = file.entry.chunks[index]
        if ref in self.failed:
            return None
        size = file.expected(index)
        label = f"chunk {index + 1}/{len(file.entry.chunks)} {ref[:12]}"
        fetch = partial(
            self.source.get, ref, limit=size, path=file.entry.path, label=label, size=size
        )
        fetched = False

        async def fetch_once() -> bytes:
            nonlocal fetched
            data = await fetch()
            fetched = True
            return data

        try:
            data = await self.shared.get(ref, fetch_once)
        except (IntegrityError, ObjectNotFoundError) as exc:
            self.failed[ref] = exc
            return None
        if fetched:
            self.progress.advance(nbytes=size)
        return data

    async def _check_small(self, file: _File) -> None:
        entry = file.entry
        if not entry.chunks:
            self._compare(file, 0, hashlib.sha256(b"").hexdigest())
            return
        data = await self._chunk(file, 0)
        if data is not None:  # the one chunk's hash, checked on fetching, is the file's
            self._compare(file, len(data), digest_of_ref(entry.chunks[0]))

    async def _check_large(self, file: _File) -> None:
        digest = hashlib.sha256()
        size = 0
        # Chunks fetched ahead of the hashing, within the byte budget (at least one).
        window = max(1, min(self.config.concurrency, self.config.buffer_budget // file.chunk_size))
        ahead: list[asyncio.Task[bytes | None]] = []
        count = len(file.entry.chunks)
        try:
            for index in range(count):
                while len(ahead) < window and index + len(ahead) < count:
                    ahead.append(asyncio.create_task(self._chunk(file, index + len(ahead))))
                data = await ahead.pop(0)
                if data is None:
                    return  # a chunk is missing or corrupt: reported as such
                await to_thread(digest.update, data)  # hashing 8 MiB: off the loop
                size += len(data)
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)
        self._compare(file, size, digest.hexdigest())

    def _compare(self, file: _File, size: int, sha256: str) -> None:
        self.progress.advance(files=1)
        entry = file.entry
        if size == entry.size and sha256 == entry.sha256:
            return
        why = (
            f"restore would refuse it: its chunks hold {size} bytes hashing to {sha256[:12]}, "
            f"but the backup recorded {entry.size} bytes hashing to {entry.sha256[:12]}"
        )
        for user in file.users:
            self.bad_files[user] = why
