"""Splitting a file into fixed-size chunks and hashing them (sha256), off the event loop."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from asyncbackup.batching import ThreadBatch
from asyncbackup.errors import SourceChangedError, SourceError, SourceVanishedError
from asyncbackup.reuse import zero_digest
from asyncbackup.threads import to_thread
from asyncbackup.walk import unreadable

Opener = Callable[[int], int]
"""Opens the file with these flags (``O_NOFOLLOW`` among them); a descriptor."""


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data``; hashlib releases the GIL, so callers run it in a thread."""
    return hashlib.sha256(data).hexdigest()


class ChunkReader:
    """Reads one regular file as chunks of ``chunk_size`` bytes, and hashes it whole.

    Each ``next_chunk`` is one worker-thread call that reads and hashes, so the event loop never
    blocks. The file is opened without following links and checked at the end: if its size or
    mtime changed while it was read, ``SourceChangedError`` is raised rather than storing bytes
    that do not match the recorded size and hash. With ``accept_changes``, the change is noted in
    ``changed`` instead: ``size`` and ``sha256`` then describe exactly the bytes that were read
    (and handed out as chunks), so what is recorded always matches what is stored.

    With ``batch``, the first step (all of a small file's work) shares a worker-thread trip with
    other readers' (``batching.ThreadBatch``); a large file's later chunks go one trip each.
    """

    def __init__(
        self,
        path: Path,
        chunk_size: int,
        *,
        accept_changes: bool = False,
        opener: Opener | None = None,
        batch: ThreadBatch | None = None,
    ) -> None:
        self.path = path  # for messages; ``opener`` (if given) is how the file is opened
        self._opener = opener
        self._batch = batch
        self.chunk_size = chunk_size
        self.accept_changes = accept_changes
        self.changed = ""  # why the file is not a consistent copy, when a change was accepted
        self.size = 0
        self.stat: os.stat_result | None = None
        self._hash = hashlib.sha256()
        self._whole = ""  # set when the file is one chunk (or empty): its hash is the chunk's
        self._fd: int | None = None
        self._done = False
        self._lock = threading.Lock()  # a cancelled await leaves its thread running: serialize

    @property
    def sha256(self) -> str:
        """The hash of the whole file; complete once ``next_chunk`` has returned None."""
        return self._whole or self._hash.hexdigest()

    async def next_chunk(self) -> tuple[bytes, str] | None:
        """The next chunk and its sha256, or None after the last one.

        Raises:
            SourceError: the file cannot be opened or read, is no longer a regular file, or
                changed while it was read.
        """
        if self._done:  # the step that read the last chunk also checked and closed the file
            return None
        if self._batch is not None and self.stat is None:  # the first step
            return await self._batch.run(self._step)
        return await to_thread(self._step)

    async def aclose(self) -> None:
        """Close the file; safe to call at any point, and more than once."""
        if not self._done:
            await to_thread(self._close)

    def _step(self) -> tuple[bytes, str] | None:
        with self._lock:
            if self._done:
                return None
            try:
                if self._fd is None:
                    self._open()
                assert self._fd is not None and self.stat is not None
                # Ask for what the file holds, not a whole chunk: a 4 KiB file must not cost an
                # 8 MiB buffer. Growth or shrinking since the open is caught by the final check.
                want = min(self.chunk_size, self.stat.st_size - self.size)
                # A whole chunk inside a hole of a sparse file is zeros: not read, not hashed.
                hole = want == self.chunk_size and _in_a_hole(self._fd, self.size, want)
                if hole:
                    data = _zeros(want)
                elif want > 0:
                    data = _read_up_to(self._fd, want)
                else:
                    data = b""
            except FileNotFoundError as exc:
                raise SourceVanishedError(f"{self.path} vanished before it was read") from exc
            except OSError as exc:
                raise unreadable(self.path, exc) from exc
            digest = _zero_digest(want) if hole else sha256_hex(data)
            first = self.size == 0
            self.size += len(data)
            done = len(data) < want or self.size >= self.stat.st_size
            if first and done:
                self._whole = digest  # no second pass over the bytes of a one-chunk file
            else:
                self._hash.update(data)
            if done:
                # The last chunk: check and close in this same call, so that a small file
                # costs one trip to a worker thread.
                self._done = True
                try:
                    self._check_unchanged()
                finally:
                    self._close_fd()
            return (data, digest) if data else None

    def _open(self) -> None:
        # O_NOFOLLOW: a file swapped for a link since the walk is refused, never followed.
        # O_NONBLOCK: a file swapped for a fifo must not hang the open.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        self._fd = self._opener(flags) if self._opener else os.open(self.path, flags)
        self.stat = os.fstat(self._fd)
        if not stat.S_ISREG(self.stat.st_mode):
            raise SourceError(f"{self.path} is no longer a regular file")

    def _check_unchanged(self) -> None:
        assert self._fd is not None and self.stat is not None
        after = os.fstat(self._fd)
        before = self.stat
        if (
            after.st_size != before.st_size
            or after.st_mtime_ns != before.st_mtime_ns
            or self.size != before.st_size
        ):
            message = (
                f"{self.path} changed while it was being read "
                f"(size {before.st_size} -> {after.st_size}, read {self.size} bytes)"
            )
            if not self.accept_changes:
                raise SourceChangedError(message)
            self.changed = message

    def _close(self) -> None:
        with self._lock:
            self._close_fd()
            # A step whose caller was cancelled may still be on its way to a thread: it must
            # not open the file after this close.
            self._done = True

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _in_a_hole(fd: int, offset: int, length: int) -> bool:
    """Whether ``length`` bytes at ``offset`` (the file's position) are all a hole; the
    position is left where the next read starts. A file system without SEEK_DATA says no."""
    hole = False
    try:
        hole = os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as exc:
        hole = exc.errno == errno.ENXIO  # no data at all past ``offset``
    finally:
        os.lseek(fd, offset + length if hole else offset, os.SEEK_SET)
    return hole


@functools.lru_cache(maxsize=1)
def _zeros(size: int) -> bytes:
    return bytes(size)  # immutable: one buffer serves every hole of the job


@functools.lru_cache(maxsize=2)
def _zero_digest(size: int) -> str:
    return zero_digest(size)


def _read_up_to(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = os.read(fd, remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
