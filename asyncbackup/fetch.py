"""A restore's large chunks, streamed from the store to their place in the file.

A chunk of a large file is never held whole: its download is read a piece at a time
(``Storage.stream``), the pieces gathered (not copied) until they make ``WRITE_BLOCK`` bytes,
and each such batch is decoded (if the chunk is compressed: zstd and gzip both decode as a
stream, in bounded pieces), hashed and written at its offset in the file's temporary copy in
one worker-thread call. When the
stream ends, the chunk's length and sha256 are checked. So a download holds one block, however
large the chunk, and a restore's memory follows its concurrency, not its chunk size.

What a failed check means:

- The bytes written for a chunk whose check failed are not trusted. The chunk's download is
  retried (a ``TransientStorageError``: a byte flipped or a body cut short on the way), and the
  retry writes every byte of the chunk's range again; the file is placed only once each of its
  chunks has had an attempt that wrote its whole range and hashed to its ref.
- If a second attempt fails with exactly the same bytes (the same length and hash of what was
  decoded), the store holds them: the chunk is corrupt at rest, and the restore fails with
  ``IntegrityError``, as it always did, instead of retrying what cannot change.
- A block's write runs through ``settled``: an attempt that is cancelled (its timeout) waits for
  its thread before the retry starts, so no stale write can land after a verified one.

The whole file's sha256 (``OrderedHash``) is computed as the chunks land, in order: as soon as
the chunks before it have landed, a verified chunk's range is hashed from the page cache of the
file just written, in a worker thread, while the other downloads go on; its writeback to disk is
started then too (``POSIX_FADV_DONTNEED``), so the file's fsync does not write it all at the
end. No pass over the whole file is left for the end, and the file is placed only if that hash
and its size match the MANIFEST, as before.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from contextlib import aclosing
from typing import IO, cast

import zstandard

from asyncbackup import target as fs
from asyncbackup.compression import Codec, codec_of_ref
from asyncbackup.dirfd import Directory
from asyncbackup.errors import IntegrityError, TransientStorageError
from asyncbackup.layout import chunk_key, digest_of_ref
from asyncbackup.repository import Repository
from asyncbackup.retry import Transfer
from asyncbackup.storage.base import STREAM_PIECE
from asyncbackup.threads import settled

WRITE_BLOCK = 512 * 1024
"""Bytes gathered from a download before one thread call decodes, hashes and writes them:
small, since every download in flight holds this much and a piece more (64 at once hold
48 MiB), and large enough that the thread trips cost little (2,048 per GiB)."""
STREAM_HOLD = WRITE_BLOCK + STREAM_PIECE
"""What one streamed download takes from the byte budget (twice its chunk's length, if less):
the pieces it gathers, up to one piece past a block, or the decoded piece beside them."""
_HASH_BLOCK = 1024 * 1024
_ZERO_BLOCK = bytes(_HASH_BLOCK)


class _Corrupt(Exception):
    """What a streamed chunk decoded to does not match its ref."""


class CorruptInTransit(TransientStorageError):
    """A chunk's bytes did not match its hash: retried, since the next download may be whole."""


class _RangeWriter:
    """Thread side of one attempt: hashes decoded bytes and writes them at their place, never
    past the chunk's range (a hostile or damaged object must not overwrite its neighbours)."""

    def __init__(self, parent: Directory, temp: str, final: str, offset: int, expected: int):
        self.parent = parent
        self.temp = temp
        self.final = final
        self.offset = offset
        self.expected = expected
        self.written = 0
        self.digest = hashlib.sha256()
        self.fd: int | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.written + len(data) > self.expected:
            raise _Corrupt(f"it decodes to more than the {self.expected} bytes its chunk holds")
        assert self.fd is not None
        self.digest.update(data)
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, self.offset + self.written)
            self.written += done
            view = view[done:]
        return len(data)


class _Decoder:
    """Feeds a chunk's stored bytes to a ``_RangeWriter``, decoding them as they come."""

    def __init__(self, codec: Codec, sink: _RangeWriter) -> None:
        self.codec = codec
        self.sink = sink
        self._zstd = (
            zstandard.ZstdDecompressor().stream_writer(
                cast(IO[bytes], sink),  # it calls only write()
                write_size=WRITE_BLOCK,
                write_return_read=True,
                closefd=False,
            )
            if codec == "zstd"
            else None
        )
        self._gzip = zlib.decompressobj(31) if codec == "gzip" else None

    def feed(self, stored: list[bytes]) -> None:
        """Decode, hash and write the next pieces of the stored object (in a worker thread)."""
        sink = self.sink
        with fs.writing(sink.parent.path / sink.final):
            # One descriptor per block, opened without O_CREAT: a temporary file that a failed
            # restore removed stays removed.
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            sink.fd = os.open(sink.temp, flags, dir_fd=sink.parent.fd)
            try:
                for piece in stored:
                    self._feed(piece)
            finally:
                os.close(sink.fd)
                sink.fd = None

    def _feed(self, stored: bytes) -> None:
        try:
            if self._zstd is not None:
                self._zstd.write(stored)
            elif self._gzip is not None:
                data = stored
                while data:
                    self.sink.write(self._gzip.decompress(data, WRITE_BLOCK))
                    data = self._gzip.unconsumed_tail
            else:
                self.sink.write(stored)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise _Corrupt(f"it does not decode as {self.codec} ({exc})") from exc

    def finish(self) -> None:
        if self._gzip is not None and not self._gzip.eof:
            raise _Corrupt("the gzip stream is cut short")


async def stream_chunk(
    repo: Repository,
    ref: str,
    *,
    parent: Directory,
    temp: str,
    final: str,
    offset: int,
    expected: int,
    path: str,
    label: str,
) -> None:
    """Download chunk ``ref`` into bytes ``[offset, offset + expected)`` of the temporary file
    ``temp`` (of the file ``final`` in ``parent``), checking its length and sha256; retried
    through the job's retry layer as one transfer, like any chunk.

    Raises:
        IntegrityError: the store holds bytes that do not match the chunk's hash (the same
            wrong bytes came twice), or that do not decode.
        ObjectNotFoundError: the chunk is missing from the store.
        TargetError: the temporary file cannot be written.
    """
    key = chunk_key(ref)
    where = f"chunk {key} of {path}"
    codec = codec_of_ref(ref)
    wanted = digest_of_ref(ref)
    failures: set[tuple[int, str, str]] = set()

    async def attempt() -> None:
        sink = _RangeWriter(parent, temp, final, offset, expected)
        decoder = _Decoder(codec, sink)
        batch: list[bytes] = []
        gathered = 0
        try:
            async with aclosing(repo.store.stream(key)) as pieces:
                async for piece in pieces:
                    batch.append(piece)
                    gathered += len(piece)
                    if gathered >= WRITE_BLOCK:
                        await settled(decoder.feed, batch)
                        batch, gathered = [], 0
            if batch:
                await settled(decoder.feed, batch)
            decoder.finish()
            if sink.written != expected or sink.digest.hexdigest() != wanted:
                raise _Corrupt(f"its bytes do not match its hash ({sink.written} bytes)")
        except _Corrupt as exc:
            seen = (sink.written, sink.digest.hexdigest(), str(exc))
            if seen in failures:  # the same wrong bytes twice: that is what the store holds
                raise IntegrityError(
                    f"{where} is corrupt in {repo.store.url}: {exc}; restore an older backup, "
                    "or back up the source again"
                ) from None
            failures.add(seen)
            raise CorruptInTransit(f"{where}: {exc}; downloading it again") from None

    what = Transfer(repo.operation, "download", path, label, nbytes=expected)
    await repo.retrier.run(what, attempt)


class OrderedHash:
    """The sha256 of a file restored in parallel, fed with its chunks in file order as they
    land: each verified chunk's range is hashed from the file just written (the page cache), or
    as zeros for a hole, once every chunk before it has landed."""

    def __init__(self, parent: Directory, temp: str, final: str, sizes: list[int]) -> None:
        self.parent = parent
        self.temp = temp
        self.final = final
        self.sizes = sizes  # each chunk's length, in order
        self.digest = hashlib.sha256()
        self.hashed = 0  # chunks hashed so far, from the first
        self.offset = 0
        self._landed: dict[int, bool] = {}  # chunk index -> is a hole
        self._advancing = False

    @property
    def done(self) -> bool:
        return self.hashed == len(self.sizes)

    async def landed(self, index: int, *, hole: bool = False) -> bool:
        """Chunk ``index`` is verified and written (or is a hole); hash what is now in order.
        True for the one call that hashed the file's last byte.

        Raises:
            TargetError: the temporary file cannot be read back.
        """
        self._landed[index] = hole
        if self._advancing:  # another task is hashing; it picks this one up when it is next
            return False
        self._advancing = True
        try:
            # Checked again after every await, on the loop: a chunk landing meanwhile is seen.
            while self.hashed in self._landed:
                is_hole = self._landed.pop(self.hashed)
                size = self.sizes[self.hashed]
                await settled(self._hash_range, self.offset, size, is_hole)
                self.offset += size
                self.hashed += 1
        finally:
            self._advancing = False
        return self.done

    def _hash_range(self, offset: int, size: int, hole: bool) -> None:
        if hole:
            left = size
            while left:
                step = min(left, _HASH_BLOCK)
                self.digest.update(_ZERO_BLOCK if step == _HASH_BLOCK else _ZERO_BLOCK[:step])
                left -= step
            return
        with fs.writing(self.parent.path / self.final):
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.temp, flags, dir_fd=self.parent.fd)
            try:
                end = offset + size
                while offset < end:
                    block = os.pread(fd, min(_HASH_BLOCK, end - offset), offset)
                    if not block:
                        break  # shorter than its chunks: the size check refuses it
                    self.digest.update(block)
                    offset += len(block)
                # Hashed, so no longer needed in the page cache: this starts its writeback now,
                # overlapped with the other downloads, so the fsync before the file is put in
                # place is not left to write the whole file at the end.
                os.posix_fadvise(fd, end - size, size, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
