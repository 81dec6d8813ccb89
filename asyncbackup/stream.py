"""Backing up a stream of bytes (standard input, a command's output, an async iterator) as one
file, chunk by chunk while it is still being produced, in the memory of any other file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import stat
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from asyncbackup.chunking import sha256_hex
from asyncbackup.defaults import DEFAULT_STDIN_NAME as DEFAULT_STDIN_NAME  # re-exported
from asyncbackup.errors import ConfigError, ManifestError, SourceError
from asyncbackup.manifest import FileEntry
from asyncbackup.manifest_checks import check_relative_path
from asyncbackup.pool import TaskPool
from asyncbackup.threads import to_thread

if TYPE_CHECKING:
    from asyncbackup.backup import BackupJob

READ_SIZE = 1024 * 1024  # one read from a pipe; chunks are cut from these
DEFAULT_STREAM_MODE = 0o600  # a dump is often a secret: readable by its owner only, once restored


@dataclass(frozen=True)
class StreamSource:
    """What a stream backup stores: ``chunks`` (any pieces of bytes, in order) as one file
    named ``filename``; ``label`` is what the MANIFEST records as the backup's source."""

    chunks: AsyncIterable[bytes]
    filename: str
    label: str = "stream"
    mode: int = DEFAULT_STREAM_MODE

    def __post_init__(self) -> None:
        if "/" in self.filename:
            raise ConfigError(
                f"stream file name {self.filename!r} must be a plain name, without '/'"
            )
        try:
            check_relative_path(self.filename)
        except ManifestError as exc:
            raise ConfigError(f"invalid stream file name {self.filename!r}: {exc}") from None
        if not 0 <= self.mode <= 0o7777:
            raise ConfigError(f"stream file mode {self.mode:o} is out of range")


async def rechunk(pieces: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """The bytes of ``pieces`` cut into chunks of exactly ``size`` (the last may be shorter);
    holds at most one chunk plus one piece."""
    pending = bytearray()
    async for piece in pieces:
        view = memoryview(piece)
        start = 0
        if pending:
            start = min(size - len(pending), len(view))
            pending += view[:start]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending = bytearray()
        while len(view) - start >= size:
            yield bytes(view[start : start + size])
            start += size
        pending += view[start:]
    if pending:
        yield bytes(pending)


async def store_stream(job: BackupJob, pool: TaskPool, source: StreamSource) -> None:
    """Read ``source`` chunk by chunk, upload each chunk the store lacks through ``pool`` (whose
    room bounds the chunks held), and add its one file entry to ``job``."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0

    def hash_chunk(data: bytes) -> str:  # the chunk's hash and the whole file's, in one trip
        whole.update(data)
        return sha256_hex(data)

    try:
        async for data in rechunk(source.chunks, job.config.chunk_size):
            digest = await to_thread(hash_chunk, data)
            chunks.append(digest)
            size += len(data)
            job.progress.advance(nbytes=len(data))
            if digest in job.scheduled:  # already stored, or on its way
                continue
            job.scheduled.add(digest)
            label = f"chunk {len(chunks)} {digest[:12]}"
            # Paid for once read (a pipe's length is not known before): the budget bounds what
            # waits for an upload, plus the one chunk in hand.
            held = await job.buffers.acquire(len(data))
            upload = partial(job.upload, source.filename, digest, data, label, held)
            try:
                await pool.spawn(source.filename, upload)
            except BaseException:
                job.buffers.release(held)
                raise
    except SourceError as exc:
        pool.record(source.filename, exc)  # named in the failure, as a file's read error is
        raise
    job.entries.append(
        FileEntry(
            source.filename,
            "file",
            source.mode,
            time.time_ns(),
            size=size,
            sha256=whole.hexdigest(),
            chunks=tuple(chunks),
        )
    )
    job.progress.advance(files=1)


def read_stdin() -> AsyncIterator[bytes]:
    """Standard input, a piece at a time, never blocking the event loop.

    Raises:
        ConfigError: standard input is a terminal (nothing was piped in); raised at once.
    """
    fd = sys.stdin.fileno()
    if os.isatty(fd):
        raise ConfigError(
            "standard input is a terminal: pipe the data in, for example "
            "'pg_dump app | asyncbackup backup - STORE --stdin-name app.sql'"
        )
    return _read_fd(fd, os.fstat(fd).st_mode)


async def _read_fd(fd: int, mode: int) -> AsyncIterator[bytes]:
    if stat.S_ISREG(mode):  # `< file`: a read never waits, so a worker thread serves
        while piece := await to_thread(os.read, fd, READ_SIZE):
            yield piece
        return
    # A pipe: read through the event loop, so that a cancelled backup never leaves a thread
    # blocked in a read that only the writer can end.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", buffering=0)
    )
    try:
        while piece := await reader.read(READ_SIZE):
            yield piece
    finally:
        transport.close()


@asynccontextmanager
async def command_output(command: str) -> AsyncIterator[AsyncIterator[bytes]]:
    """Run ``command`` (split as a shell would, but run without one) and give its standard
    output, a piece at a time; its standard error passes through to ours. When the output ends,
    the command must exit 0: a pipe would hide the producer's failure, and a dump cut short must
    never be committed as a backup.

    Raises:
        ConfigError: the command is empty or cannot be started.
        SourceError: the command exited non-zero (raised at the end of its output).
    """
    argv = shlex.split(command)
    if not argv:
        raise ConfigError("--stdin-from-command needs a command, such as 'pg_dump app'")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {command!r}: {exc.strerror or exc}") from exc
    assert process.stdout is not None
    stdout = process.stdout

    async def pieces() -> AsyncIterator[bytes]:
        while piece := await stdout.read(READ_SIZE):
            yield piece
        code = await process.wait()
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise SourceError(
                f"the command {command!r} {how}, so its output may be incomplete: "
                "fix the command and run the backup again"
            )

    try:
        yield pieces()
    finally:
        if process.returncode is None:  # the backup failed or was cancelled first
            process.kill()
            await process.wait()
