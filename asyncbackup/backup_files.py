"""A backup's reading of its source: each entry the walk yields becomes a MANIFEST entry; a
file's chunks are read, hashed and uploaded within the job's buffer budget, unless unchanged
since the parent; a file that changes while it is read is read again."""

from __future__ import annotations

import logging
import stat
from collections.abc import Awaitable, Callable
from functools import partial

import msgspec

from asyncbackup.backup_state import OPERATION, BackupState
from asyncbackup.chunking import ChunkReader
from asyncbackup.compression import encode_chunk
from asyncbackup.errors import SourceChangedError, SourceError, SourceVanishedError
from asyncbackup.manifest import EntryType, FileEntry, SourceWarning, WarningKind
from asyncbackup.metadata import xattrs_of, xattrs_or_warn
from asyncbackup.parent import digests, entry_from_parent
from asyncbackup.pool import TaskPool
from asyncbackup.threads import to_thread
from asyncbackup.walk import SourceEntry

log = logging.getLogger("asyncbackup")
READS_OF_A_CHANGING_FILE = 3
"""A file that changes while it is read is read again; the last of this many reads is stored as
read, with a warning (or, with ``strict``, the backup fails)."""
Upload = Callable[[str, bytes, str, int], Awaitable[None]]
"""Stores one chunk: (digest, data, label, bytes it holds of the job's buffer budget, which the
upload gives back once done, failed or cancelled)."""


class SourceFiles(BackupState):
    """``BackupJob``'s reading of the source and uploading of chunks."""

    def _take(self, entry: SourceEntry) -> FileEntry | None:
        """The final entry of a directory, a symlink, or a file unchanged since the parent;
        None for what the loop must handle (files to read, hard links, special files). Runs in
        the walk's worker thread, so an unchanged file costs the event loop nothing of its own:
        it reads only the parent (not changed while the walk runs) and the job's settings."""
        if not self._takes(entry):
            return None  # another shard's: the loop leaves it out
        st = entry.stat
        if entry.kind == "file":
            if self.parent is None or st.st_nlink > 1:  # hard links: ``self.links``, on the loop
                return None
            xattrs = xattrs_or_warn(entry.reachable) if self.options.xattrs else ()
            return self.parent.reusable(entry.path, st, xattrs=xattrs, trusted=self.trusted)
        if entry.kind not in ("dir", "symlink"):
            return None
        return FileEntry(
            entry.path,
            "dir" if entry.kind == "dir" else "symlink",
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns,
            target=entry.target or "",
            uid=st.st_uid,
            gid=st.st_gid,
            xattrs=xattrs_or_warn(entry.reachable) if self.options.xattrs else (),
        )

    def _took(self, taken: list[FileEntry]) -> None:
        """Count what the walk's thread took whole: one update per batch, not per file."""
        if not taken:
            return
        self.ready += taken
        unchanged = sum(e.type == "file" for e in taken)
        if unchanged:
            self.unchanged += unchanged
            self.progress.advance(files=unchanged)
            self.metrics.files.labels(OPERATION, "unchanged").inc(unchanged)
            if log.isEnabledFor(logging.DEBUG):
                for e in taken:
                    if e.type == "file":
                        log.debug("unchanged %s (%d bytes, not read)", e.path, e.size)

    async def _add(self, pool: TaskPool, entry: SourceEntry) -> None:
        st = entry.stat
        mode = stat.S_IMODE(st.st_mode)
        if entry.kind in ("dir", "symlink"):
            xattrs = await xattrs_of(entry.reachable, wanted=self.options.xattrs)
            kind: EntryType = "dir" if entry.kind == "dir" else "symlink"
            self.entries.append(
                FileEntry(
                    entry.path,
                    kind,
                    mode,
                    st.st_mtime_ns,
                    target=entry.target or "",
                    uid=st.st_uid,
                    gid=st.st_gid,
                    xattrs=xattrs,
                )
            )
        elif entry.kind == "file" and self.links.claim(entry.path, st):
            pass  # another name of a file read under its first name: recorded as a hard link
        elif entry.kind == "file" and (unchanged := await self._unchanged(entry)):
            self.entries.append(unchanged)
            self.unchanged += 1
            log.debug("unchanged %s (%d bytes, not read)", entry.path, unchanged.size)
            self.progress.advance(files=1)
            self.metrics.files.labels(OPERATION, "unchanged").inc()
        elif entry.kind == "file" and st.st_size <= self.config.chunk_size:
            # A small file is one task that reads and uploads it, so many are read at once.
            upload_here = partial(self.upload, entry.path)
            await pool.spawn(entry.path, partial(self._add_file, entry, upload_here))
        elif entry.kind == "file":
            # A large file is read here, chunk by chunk; its chunks are uploaded in parallel.
            async def upload_in_pool(digest: str, data: bytes, label: str, held: int) -> None:
                upload = partial(self.upload, entry.path, digest, data, label, held)
                try:
                    await pool.spawn(entry.path, upload)
                except BaseException:
                    self.buffers.release(held)  # the task never started: nobody else will
                    raise

            try:
                await self._add_file(entry, upload_in_pool)
            except SourceError as exc:
                pool.record(entry.path, exc)
                raise
        else:
            self.skipped += 1
            self.metrics.files.labels(OPERATION, "skipped").inc()
            log.warning("skipped %s: not a regular file, directory or symlink", entry.path)

    async def _unchanged(self, entry: SourceEntry) -> FileEntry | None:
        """This file's entry taken from the parent, if it is unchanged since: its content is
        not read (its extended attributes are, if asked for, as for any file)."""
        if self.parent is None:
            return None
        old = self.parent.unchanged(entry.path, entry.stat)
        if old is None:
            return None
        mode = stat.S_IMODE(entry.stat.st_mode)
        new = entry_from_parent(old, entry.stat, mode, chunks=digests(old.chunks))
        if not all(d in self.scheduled for d in new.chunks):
            return None  # a chunk of it is not in the store (the parent is damaged): read it
        if self.options.xattrs:
            new = msgspec.structs.replace(new, xattrs=await xattrs_of(entry.reachable, wanted=True))
        return new

    async def _add_file(self, entry: SourceEntry, upload: Upload) -> None:
        """Read, hash and upload one file; a file that changes while it is read (a log being
        written) is read again, up to ``READS_OF_A_CHANGING_FILE`` times in all. Unless
        ``strict``, the last read is stored as read, and a file that vanished or cannot be read
        is skipped; each with a warning the MANIFEST records.

        Raises:
            SourceError: with ``strict`` only: the file cannot be read, or it changed during
                every read.
        """
        strict = self.options.strict
        for read in range(1, READS_OF_A_CHANGING_FILE + 1):
            last = read == READS_OF_A_CHANGING_FILE
            try:
                return await self._read_file(entry, upload, accept_changes=last and not strict)
            except SourceChangedError as exc:
                if last:
                    raise SourceChangedError(
                        f"{exc}; it changed during each of {read} reads: back it up again "
                        "once it is quiet"
                    ) from exc
                # The chunks of the torn read that went up are harmless: named by nothing,
                # prune removes them.
                log.warning(
                    "%s; reading it again (%d of %d)", exc, read + 1, READS_OF_A_CHANGING_FILE
                )
            except SourceError as exc:
                if strict:
                    raise
                kind: WarningKind = (
                    "vanished" if isinstance(exc, SourceVanishedError) else "unreadable"
                )
                self._warn(SourceWarning(entry.path, kind, f"{exc}; skipped"))
                self.metrics.files.labels(OPERATION, "skipped").inc()
                return

    def _unlistable(self, relative: str, error: SourceError) -> None:
        """A directory that cannot be listed: recorded empty, with a warning (or, with
        ``strict``, the end of the backup)."""
        if self.options.strict:
            raise error
        kind: WarningKind = "vanished" if isinstance(error, SourceVanishedError) else "unreadable"
        self._warn(SourceWarning(relative, kind, f"{error}; what it holds is skipped"))

    def _warn(self, warning: SourceWarning) -> None:
        log.warning("%s", warning.message)
        self.warnings.append(warning)

    async def _read_file(
        self, entry: SourceEntry, upload: Upload, *, accept_changes: bool = False
    ) -> None:
        reader = ChunkReader(
            entry.shown,
            self.config.chunk_size,
            accept_changes=accept_changes,
            opener=entry.open,
            batch=self._reads,
        )
        chunks: list[str] = []
        # A compressed chunk's upload holds its encoded copy as well (never larger).
        copies = 1 if self.config.compression.codec == "none" else 2
        try:
            while True:
                # Read-ahead is bounded in bytes: the chunk's buffer is paid for before it is
                # filled, and given back once it is uploaded (or found already stored).
                expected = min(self.config.chunk_size, max(0, entry.stat.st_size - reader.size))
                held = await self.buffers.acquire(expected * copies)
                try:
                    chunk = await reader.next_chunk()
                except BaseException:
                    self.buffers.release(held)
                    raise
                if chunk is None:
                    self.buffers.release(held)
                    break
                data, digest = chunk
                held = self._resize(held, len(data) * copies)
                chunks.append(digest)
                self.bytes_read += len(data)
                self.progress.advance(nbytes=len(data))
                if digest in self.scheduled:
                    self.buffers.release(held)
                    self.metrics.chunks.labels(OPERATION, "skipped").inc()
                    self.metrics.bytes.labels(OPERATION, "skipped").inc(len(data))
                    continue
                self.scheduled.add(digest)
                await upload(digest, data, f"chunk {len(chunks)} {digest[:12]}", held)
        finally:
            await reader.aclose()
        assert reader.stat is not None
        if reader.changed:
            self._warn(
                SourceWarning(
                    entry.path,
                    "changed",
                    f"{reader.changed}, during each of {READS_OF_A_CHANGING_FILE} reads: "
                    f"stored as last read ({reader.size} bytes), which may not be a consistent "
                    "copy",
                )
            )
        self.entries.append(
            FileEntry(
                entry.path,
                "file",
                stat.S_IMODE(reader.stat.st_mode),
                reader.stat.st_mtime_ns,
                size=reader.size,
                sha256=reader.sha256,
                chunks=tuple(chunks),
                ctime_ns=reader.stat.st_ctime_ns,
                inode=reader.stat.st_ino,
                uid=reader.stat.st_uid,
                gid=reader.stat.st_gid,
                xattrs=await xattrs_of(entry.reachable, wanted=self.options.xattrs),
            )
        )
        self.progress.advance(files=1)
        self.metrics.files.labels(OPERATION, "done").inc()  # counted as it goes, for a scrape
        log.debug("stored %s (%d bytes, %d chunks)", entry.path, reader.size, len(chunks))

    def _resize(self, held: int, actual: int) -> int:
        """What a buffer holds of the budget, once its real length is known: a file that
        shrank gives back the rest; one that grew since it was listed takes the difference
        without waiting (it is in memory already)."""
        if actual < held:
            self.buffers.release(held - actual)
        elif actual > held:
            self.buffers.force(actual - held)
        return actual

    async def upload(self, path: str, digest: str, data: bytes, label: str, held: int = 0) -> None:
        """Store one chunk of ``path`` (encoded, if the config says so), retried; count it.
        ``held`` bytes of the buffer budget are given back at the end, however it ends."""
        try:
            compression = self.config.compression
            if compression.codec == "none":
                stored, ref, stored_sha256 = data, digest, digest
            else:  # each chunk on its own, in a worker thread: the loop never compresses
                stored, ref, stored_sha256 = await to_thread(
                    encode_chunk, data, digest, compression
                )
            if self.packer is not None and len(stored) < self.config.pack_threshold:
                await self.packer.add(ref, stored, len(data))  # counted once its pack is stored
                return
            await self.repo.put_chunk(
                ref, stored, data_sha256=stored_sha256, path=path, label=label
            )
        finally:
            if held:
                self.buffers.release(held)
        self.stored[digest] = ref
        self.uploaded += 1
        self.bytes_uploaded += len(stored)  # what went over the wire: compressed, if it was
        self.metrics.chunks.labels(OPERATION, "transferred").inc()
        self.metrics.bytes.labels(OPERATION, "transferred").inc(len(stored))
