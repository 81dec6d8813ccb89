"""One restore job: fetch and check every chunk, assemble each file aside, then put it in place.

The file-system side (descriptors, temporary names, placing, directories, links) is in
``target.py``; a large file's chunks are streamed to their place by ``fetch.py``; this module
schedules the fetches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from asyncbackup import target as fs
from asyncbackup.budget import ByteBudget
from asyncbackup.chunking import sha256_hex
from asyncbackup.config import EngineConfig
from asyncbackup.dirfd import Directory, DirectoryTree
from asyncbackup.errors import IntegrityError
from asyncbackup.fetch import STREAM_HOLD, OrderedHash, stream_chunk
from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.metrics import Metrics
from asyncbackup.packread import ChunkSource
from asyncbackup.packs import PackIndex
from asyncbackup.pool import TaskPool
from asyncbackup.progress import Progress
from asyncbackup.repository import Repository
from asyncbackup.reuse import SharedChunks, is_zero_chunk, zero_digest
from asyncbackup.target import TEMP_MARK
from asyncbackup.threads import settled, to_thread

log = logging.getLogger("asyncbackup")
OPERATION = "restore"
EMPTY_SHA256 = sha256_hex(b"")
__all__ = ["TEMP_MARK", "RestoreJob", "RestoreSummary"]


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore wrote and what it cost."""

    name: str
    files: int
    dirs: int
    symlinks: int
    bytes: int
    chunks_downloaded: int
    retries: int
    seconds: float
    files_in_place: int = 0  # with overwrite: already there with the right bytes, not fetched
    holes: int = 0  # chunks of zeros, never fetched, left as holes in sparse files
    leftovers_removed: int = 0  # temporary files of killed restores, removed
    deleted: int = 0  # with delete: entries of the target the backup does not have, removed


class _PendingFile:
    """A file being assembled under a temporary name, hashed in order as its chunks land; put
    in place once the last of them is hashed."""

    def __init__(self, entry: FileEntry, parent: Directory, name: str, chunk_size: int) -> None:
        self.entry = entry
        self.parent = parent
        self.name = name
        self.temp = fs.temp_name()
        sizes = [min(chunk_size, entry.size - i * chunk_size) for i in range(len(entry.chunks))]
        self.hash = OrderedHash(parent, self.temp, name, sizes)


class RestoreJob:
    """Restores one manifest into a target directory; never writes outside it.

    Memory: every buffer of file data takes its bytes from one ``ByteBudget`` of
    ``config.buffer_budget`` bytes (``budget.py``) before it is filled: a chunk fetched whole
    (a file of one chunk, or a chunk used more than once) takes its length; a chunk streamed to
    its place in the file (``fetch.py``) takes ``STREAM_HOLD``; chunks the backup uses more than
    once are kept from their first use to their last only in what is left (``reuse.py``), and
    so are the pack segments read for several chunks, which give way to any buffer that would
    otherwise wait (``packread.py``).
    """

    def __init__(
        self, repo: Repository, config: EngineConfig, metrics: Metrics, progress: Progress
    ) -> None:
        self.repo = repo
        self.config = config
        self.metrics = metrics
        self.progress = progress
        self.unfinished: set[_PendingFile] = set()
        self.downloaded = 0
        self.in_place = 0
        self.holes = 0
        self.zero: dict[int, str] = {}
        self.buffers = ByteBudget(config.buffer_budget)
        self.shared = SharedChunks((), budget=self.buffers)
        self.source = ChunkSource(repo, PackIndex())  # chunk objects, or ranges of packs

    async def run(
        self,
        manifest: Manifest,
        target: Path,
        *,
        overwrite: bool,
        delete: bool = False,
        sweep_leftovers: bool = True,
    ) -> RestoreSummary:
        """Restore ``manifest`` into ``target``. With ``overwrite``, files already in place
        with the right size and sha256 are kept, not fetched; with ``delete`` too, entries of
        the target that the backup does not have are removed first. ``sweep_leftovers``:
        remove the temporary files of killed restores (not while other shards restore beside us).

        Raises:
            ConfigError: the target is a file, or is not empty and ``overwrite`` is False.
            ManifestError: a link or file of the target stands where the backup has a directory.
            TargetError: the target cannot be written (a full disk, a permission).
            BackupFailed: a chunk was missing or corrupt, or the store failed; no file is left
                half-written under its final name.
        """
        started = time.monotonic()
        # Pack segments held between their chunks' uses take from the buffers' budget, only
        # what the buffers leave unused (packread.py): the two together stay under it.
        self.source = await ChunkSource.open(self.repo, manifest, budget=self.buffers)
        tree, occupied = await settled(fs.prepare, target, overwrite or delete)
        leftovers = deleted = 0
        # Not while other processes restore other shards into the same target: their
        # temporary files would look like leftovers (restore_shards.py).
        if occupied and sweep_leftovers:
            leftovers = await settled(fs.remove_leftovers, tree, manifest.entries)
            if leftovers:
                log.info(
                    "removed %d temporary files left in %s by an interrupted restore",
                    leftovers,
                    tree.root.path,
                )
            if delete:
                deleted = await settled(fs.delete_extras, tree, manifest.entries)
        await settled(fs.make_dirs, tree, manifest.entries)
        chunk_size = manifest.chunk_size
        self.zero = {chunk_size: await settled(zero_digest, chunk_size)}
        # A file with several names is restored once, under its first name; the others are
        # linked to it at the end (an older reader, or a partial restore without the first
        # name, has each name restored from its chunks instead).
        leaders = {e.path for e in manifest.entries if e.type == "file" and not e.hardlink}
        files = [e for e in manifest.entries if e.type == "file" and e.hardlink not in leaders]

        def count_uses() -> SharedChunks:  # a million refs: counted off the event loop
            refs = [c for e in files for c in e.chunks if not is_zero_chunk(c, chunk_size, zero)]
            self.source.plan(refs)  # which packs to read whole, which by ranges
            return SharedChunks(refs, budget=self.buffers)

        zero = self.zero
        self.shared = await to_thread(count_uses)
        budget = self.repo.retrier.budget

        def hint() -> str:
            return budget.explain() + (
                f"Each file in {tree.root.path} is either whole or absent (nothing is "
                "half-written): run the same restore again with --overwrite; files already in "
                "place are kept, not fetched again."
            )

        outcome = f"the files restored until then are in place in {tree.root.path}, each whole"
        limit = self.config.buffered_chunks
        try:
            async with TaskPool(OPERATION, limit=limit, hint=hint, outcome=outcome) as pool:
                for entry in files:
                    if len(entry.chunks) <= 1:
                        # One task checks, fetches, writes and places it: one thread call each.
                        whole = partial(self._restore_whole, tree, entry, occupied, chunk_size)
                        await pool.spawn(entry.path, whole)
                    else:
                        await self._start_file(pool, tree, entry, occupied, chunk_size)
        finally:
            self.source.clear()  # segments of chunks not used after all (a file in place)
            if self.unfinished:
                await settled(_remove_temps, list(self.unfinished))
        await settled(fs.finish_tree, tree, manifest.entries, leaders)
        totals = manifest.totals
        return RestoreSummary(
            name=manifest.name,
            files=totals.files,
            dirs=totals.dirs,
            symlinks=totals.symlinks,
            bytes=totals.bytes,
            chunks_downloaded=self.downloaded,
            retries=budget.spent,
            seconds=time.monotonic() - started,
            files_in_place=self.in_place,
            holes=self.holes,
            leftovers_removed=leftovers,
            deleted=deleted,
        )

    async def _in_place(self, parent: Directory, name: str, entry: FileEntry) -> bool:
        if not await settled(fs.already_in_place, parent, name, entry):
            return False
        self.in_place += 1
        self.shared.skip(entry.chunks)
        self.progress.advance(files=1, nbytes=entry.size)
        self.metrics.files.labels(OPERATION, "skipped").inc()
        self.metrics.bytes.labels(OPERATION, "skipped").inc(entry.size)
        return True

    async def _restore_whole(
        self, tree: DirectoryTree, entry: FileEntry, occupied: bool, chunk_size: int
    ) -> None:
        parent, name = await _parent(tree, entry)
        if occupied and await self._in_place(parent, name, entry):
            return
        # The one chunk's hash was checked on fetching: it is the file's hash, so no second pass.
        async with self.buffers.hold(entry.size):
            data = await self._fetch(entry, 0, chunk_size) if entry.chunks else b""
            digest = digest_of_ref(entry.chunks[0]) if entry.chunks else EMPTY_SHA256
            await settled(fs.write_whole, parent, name, entry, data, digest)
            del data
        self._file_done(entry)

    async def _start_file(
        self,
        pool: TaskPool,
        tree: DirectoryTree,
        entry: FileEntry,
        occupied: bool,
        chunk_size: int,
    ) -> None:
        """A file of several chunks: fetched in parallel into a temporary file, hashed in order
        as they land, placed by the task that hashes its last byte. Chunks of zeros are not
        fetched nor written: holes. A chunk used only here is streamed to its place; one used
        more than once is fetched whole, to be kept for its next use."""
        parent, name = await _parent(tree, entry)
        if occupied and await self._in_place(parent, name, entry):
            return
        holes = [
            i for i, ref in enumerate(entry.chunks) if self._is_hole(entry, i, ref, chunk_size)
        ]
        self.holes += len(holes)
        pending = _PendingFile(entry, parent, name, chunk_size)
        self.unfinished.add(pending)
        await settled(fs.create_temp, parent, pending.temp, entry.size, name)
        for index in holes:
            if await pending.hash.landed(index, hole=True):  # all of it zeros: nothing to fetch
                await self._finish_file(pending)
                return

        async def fetch(index: int) -> None:
            if self._streamable(entry.chunks[index]):
                await self._stream_into(pending, index, chunk_size)
            else:
                await self._fetch_whole_into(pending, index, chunk_size)
            if await pending.hash.landed(index):
                await self._finish_file(pending)

        for index in range(len(entry.chunks)):
            if index not in holes:
                await pool.spawn(entry.path, partial(fetch, index))

    def _streamable(self, ref: str) -> bool:
        """Whether chunk ``ref`` is streamed to its place: an object of its own that no other
        use needs (a chunk used again is fetched whole, to be kept for that use; a packed one is
        cut out of its pack, ``packread.py``)."""
        return ref not in self.source.index and not self.shared.is_shared(ref)

    async def _fetch_whole_into(self, pending: _PendingFile, index: int, chunk_size: int) -> None:
        expected = min(chunk_size, pending.entry.size - index * chunk_size)
        async with self.buffers.hold(expected):
            data = await self._fetch(pending.entry, index, chunk_size)
            await settled(
                fs.write_at, pending.parent, pending.temp, index * chunk_size, data, pending.name
            )
            del data

    async def _stream_into(self, pending: _PendingFile, index: int, chunk_size: int) -> None:
        entry = pending.entry
        ref = entry.chunks[index]
        expected = min(chunk_size, entry.size - index * chunk_size)
        # A store that cannot stream gives the chunk whole: then it holds all of it.
        hold = min(STREAM_HOLD, 2 * expected) if self.repo.store.streams else expected
        async with self.buffers.hold(hold):
            await stream_chunk(
                self.repo,
                ref,
                parent=pending.parent,
                temp=pending.temp,
                final=pending.name,
                offset=index * chunk_size,
                expected=expected,
                path=entry.path,
                label=f"chunk {index + 1}/{len(entry.chunks)} {ref[:12]}",
            )
        self.downloaded += 1
        self.metrics.chunks.labels(OPERATION, "transferred").inc()
        self.metrics.bytes.labels(OPERATION, "transferred").inc(expected)
        self.progress.advance(nbytes=expected)

    def _is_hole(self, entry: FileEntry, index: int, ref: str, chunk_size: int) -> bool:
        expected = min(chunk_size, entry.size - index * chunk_size)
        if is_zero_chunk(ref, expected, self.zero):
            self._not_fetched(expected)
            return True
        return False

    def _not_fetched(self, nbytes: int) -> None:
        """Bytes restored without a download: zeros, or a chunk an earlier use fetched."""
        self.progress.advance(nbytes=nbytes)
        self.metrics.bytes.labels(OPERATION, "skipped").inc(nbytes)

    async def _fetch(self, entry: FileEntry, index: int, chunk_size: int) -> bytes:
        """Chunk ``index`` of ``entry``, decoded, its hash and length checked."""
        ref = entry.chunks[index]
        label = f"chunk {index + 1}/{len(entry.chunks)} {ref[:12]}"
        expected = min(chunk_size, entry.size - index * chunk_size)
        if is_zero_chunk(ref, expected, self.zero):
            self._not_fetched(expected)
            return bytes(expected)  # a one-chunk file of zeros: known from its hash
        fetched = False

        async def download() -> bytes:
            nonlocal fetched
            # Decoding stops past ``expected`` bytes: a corrupt chunk cannot balloon in memory.
            data = await self.source.get(
                ref, limit=expected, path=entry.path, label=label, size=expected
            )
            fetched = True
            self.downloaded += 1
            self.metrics.chunks.labels(OPERATION, "transferred").inc()
            self.metrics.bytes.labels(OPERATION, "transferred").inc(len(data))
            self.progress.advance(nbytes=len(data))
            return data

        data = await self.shared.get(ref, download)
        if len(data) != expected:  # each use checks: a hostile MANIFEST may disagree with itself
            raise IntegrityError(f"{entry.path}: {label} holds {len(data)} bytes, not {expected}")
        if not fetched:
            self._not_fetched(len(data))
        return data

    async def _finish_file(self, pending: _PendingFile) -> None:
        size, sha256 = pending.hash.offset, pending.hash.digest.hexdigest()
        await settled(fs.check_and_place, pending.parent, pending.temp, pending.name, pending.entry,
                      size=size, sha256=sha256)  # fmt: skip
        self.unfinished.discard(pending)
        self._file_done(pending.entry)

    def _file_done(self, entry: FileEntry) -> None:
        self.progress.advance(files=1)
        self.metrics.files.labels(OPERATION, "done").inc()  # counted as it goes, for a scrape
        log.debug("restored %s (%d bytes)", entry.path, entry.size)


async def _parent(tree: DirectoryTree, entry: FileEntry) -> tuple[Directory, str]:
    """The open directory that holds ``entry``, and its name there."""
    parent_path, name = fs.split(entry.path)
    found = tree.cached(parent_path)  # most files: their directory is open, no thread needed
    if found is None:
        found = await settled(fs.directory, tree, parent_path, entry.path)
    return found, name


def _remove_temps(pending: list[_PendingFile]) -> None:
    for p in pending:
        fs.remove_temp(p.parent, p.temp)
