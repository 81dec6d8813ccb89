"""One file of a backup, streamed in order to an async writer (``asyncbackup cat``): each chunk
is fetched ahead, checked against its hash, and only then written."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from asyncbackup.errors import ConfigError, IntegrityError, ManifestError
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.packread import ChunkSource
from asyncbackup.repository import Repository
from asyncbackup.threads import to_thread

Write = Callable[[bytes], Awaitable[object]]
"""Takes the next bytes of the file, in order: an aiofiles file's ``write``, say."""


def find_file(manifest: Manifest, path: str) -> FileEntry:
    """The entry of regular file ``path`` in ``manifest``.

    Raises:
        ManifestError: the backup has no entry ``path``.
        ConfigError: ``path`` is a directory or a link, not a file.
    """
    wanted = path.strip("/")
    for entry in manifest.entries:
        if entry.path == wanted:
            if entry.type != "file":
                raise ConfigError(
                    f"{path!r} in backup {manifest.name} is a {entry.type}, not a file: "
                    "cat writes one file ('asyncbackup restore --include' restores a tree)"
                )
            return entry
    raise ManifestError(
        f"backup {manifest.name} has no file {path!r}: "
        f"'asyncbackup show STORE {manifest.name} --files' lists its files"
    )


async def write_file(
    repo: Repository, manifest: Manifest, entry: FileEntry, write: Write, *, ahead: int
) -> int:
    """Write ``entry``'s bytes to ``write`` in order, fetching up to ``ahead`` chunks at once;
    the number of bytes written. Memory: at most ``ahead`` chunks, plus the pack ranges
    that hold them (``packread.py``).

    Raises:
        IntegrityError: a chunk does not match its hash or length (nothing of it is written),
            or the whole file does not match its recorded hash (everything was written: the
            caller must not trust it).
        BackupFailed: the store failed.
        ManifestError: the backup's INDEX (where its packed chunks lie) cannot be read.
    """
    size = manifest.chunk_size
    source = await ChunkSource.open(repo, manifest, budget=ahead * size)
    source.plan(entry.chunks)
    total = len(entry.chunks)

    async def fetch(index: int) -> bytes:
        expected = min(size, entry.size - index * size)
        label = f"chunk {index + 1}/{total} {entry.chunks[index][:12]}"
        data = await source.get(
            entry.chunks[index], limit=expected, path=entry.path, label=label, size=expected
        )
        if len(data) != expected:
            raise IntegrityError(f"{entry.path}: {label} holds {len(data)} bytes, not {expected}")
        return data

    whole = hashlib.sha256()
    pending: list[asyncio.Task[bytes]] = []
    written = 0

    async def write_next() -> None:
        nonlocal written
        data = await pending.pop(0)  # checked against its hash by get_chunk
        await to_thread(whole.update, data)
        await write(data)
        written += len(data)

    try:
        for index in range(total):
            pending.append(asyncio.create_task(fetch(index)))
            if len(pending) >= ahead:
                await write_next()
        while pending:
            await write_next()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled():
                    task.exception()  # retrieved: the first failure is what the caller sees
    if written != entry.size or whole.hexdigest() != entry.sha256:
        raise IntegrityError(
            f"{entry.path}: wrote {written} bytes hashing to {whole.hexdigest()[:12]}, but the "
            f"backup recorded {entry.size} bytes hashing to {entry.sha256[:12]}: "
            "do not use what was written"
        )
    return written
