"""One restore job: fetch and check every chunk, assemble each file aside, then put it in place."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ParamSpec, TypeVar

from asyncbackup.chunking import sha256_hex
from asyncbackup.config import EngineConfig
from asyncbackup.errors import ConfigError, IntegrityError, ManifestError, TargetError
from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.metadata import apply_owner_and_xattrs
from asyncbackup.metrics import Metrics
from asyncbackup.pool import TaskPool
from asyncbackup.progress import Progress
from asyncbackup.repository import Repository
from asyncbackup.threads import settled

OPERATION = "restore"
log = logging.getLogger("asyncbackup")
P = ParamSpec("P")
R = TypeVar("R")
TEMP_MARK = ".asyncbackup-"
EMPTY_SHA256 = sha256_hex(b"")


log = logging.getLogger("asyncbackup")


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


class _PendingFile:
    """A file being assembled under a temporary name; put in place when its last chunk lands."""

    def __init__(self, entry: FileEntry, final: Path) -> None:
        self.entry = entry
        self.final = final
        self.temp = _temp_name(final)
        self.remaining = len(entry.chunks)


class RestoreJob:
    """Restores one manifest into a target directory; never writes outside it."""

    def __init__(
        self, repo: Repository, config: EngineConfig, metrics: Metrics, progress: Progress
    ) -> None:
        self.repo = repo
        self.config = config
        self.metrics = metrics
        self.progress = progress
        self.unfinished: set[_PendingFile] = set()
        self.downloaded = 0

    async def run(self, manifest: Manifest, target: Path, *, overwrite: bool) -> RestoreSummary:
        """Restore ``manifest`` into ``target``.

        Raises:
            ConfigError: the target is a file, or is not empty and ``overwrite`` is False.
            BackupFailed: a chunk was missing or corrupt, or the store failed; no file is left
                half-written under its final name.
        """
        started = time.monotonic()
        real_target = await settled(_prepare_target, target, overwrite)
        await settled(_make_dirs, real_target, manifest.entries)
        budget = self.repo.retrier.budget

        def hint() -> str:
            return budget.explain() + (
                "Files restored so far are in place: run it again with --overwrite, "
                "or into an empty directory."
            )

        leaders = {e.path for e in manifest.entries if e.type == "file" and not e.hardlink}
        try:
            async with TaskPool(OPERATION, limit=self.config.buffered_chunks, hint=hint) as pool:
                for entry in manifest.entries:
                    final = real_target / entry.path
                    if entry.hardlink in leaders:
                        continue  # linked to its first name once that is in place
                    if entry.type == "file" and len(entry.chunks) <= 1:
                        # One task fetches it, then one thread call writes, checks and places it.
                        whole = partial(self._restore_whole, entry, final, manifest.chunk_size)
                        await pool.spawn(entry.path, whole)
                    elif entry.type == "file":
                        await self._start_file(pool, entry, final, manifest.chunk_size)
        finally:
            if self.unfinished:
                await settled(_remove, [p.temp for p in self.unfinished])
        await settled(_finish_tree, real_target, manifest.entries, leaders)
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
        )

    async def _restore_whole(self, entry: FileEntry, final: Path, chunk_size: int) -> None:
        # The one chunk's hash was checked on fetching: it is the file's hash, so no second pass.
        data = await self._fetch(entry, 0, chunk_size) if entry.chunks else b""
        digest = digest_of_ref(entry.chunks[0]) if entry.chunks else EMPTY_SHA256
        await settled(_write_whole, entry, final, data, digest)
        self._file_done(entry)

    async def _start_file(
        self, pool: TaskPool, entry: FileEntry, final: Path, chunk_size: int
    ) -> None:
        """A file of several chunks: fetched in parallel into a temporary file, placed by the
        task whose chunk lands last."""
        pending = _PendingFile(entry, final)
        self.unfinished.add(pending)
        await settled(_create_temp, pending.temp)

        async def fetch(index: int) -> None:
            data = await self._fetch(entry, index, chunk_size)
            await settled(_write_at, pending.temp, index * chunk_size, data)
            pending.remaining -= 1
            if pending.remaining == 0:
                await self._finish_file(pending)

        for index in range(len(entry.chunks)):
            await pool.spawn(entry.path, partial(fetch, index))

    async def _fetch(self, entry: FileEntry, index: int, chunk_size: int) -> bytes:
        """Chunk ``index`` of ``entry``, decoded, its hash and length checked."""
        ref = entry.chunks[index]
        label = f"chunk {index + 1}/{len(entry.chunks)} {ref[:12]}"
        expected = min(chunk_size, entry.size - index * chunk_size)
        # Decoding stops past ``expected`` bytes: a corrupt chunk cannot balloon in memory.
        data = await self.repo.get_chunk(
            ref, limit=expected, path=entry.path, label=label, size=expected
        )
        if len(data) != expected:
            raise IntegrityError(f"{entry.path}: {label} holds {len(data)} bytes, not {expected}")
        self.downloaded += 1
        self.metrics.chunks.labels(OPERATION, "transferred").inc()
        self.metrics.bytes.labels(OPERATION, "transferred").inc(len(data))
        self.progress.advance(nbytes=len(data))
        return data

    async def _finish_file(self, pending: _PendingFile) -> None:
        await settled(_check_and_place, pending)
        self.unfinished.discard(pending)
        self._file_done(pending.entry)

    def _file_done(self, entry: FileEntry) -> None:
        self.progress.advance(files=1)
        self.metrics.files.labels(OPERATION, "done").inc()  # counted as it goes, for a scrape
        log.debug("restored %s (%d bytes)", entry.path, entry.size)


def _writes_target(write: Callable[P, R]) -> Callable[P, R]:
    """Turn the file system's errors while writing the target into ``TargetError``."""

    @functools.wraps(write)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return write(*args, **kwargs)
        except OSError as exc:
            raise TargetError(
                f"cannot write the restore target at {exc.filename}: {exc.strerror}"
            ) from exc

    return wrapper


@_writes_target
def _prepare_target(target: Path, overwrite: bool) -> Path:
    if target.exists() and not target.is_dir():
        raise ConfigError(f"restore target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(
            f"restore target {target} is not empty: restore into an empty or new directory, "
            "or pass --overwrite to replace what is there"
        )
    target.mkdir(parents=True, exist_ok=True)
    return target.resolve()


@_writes_target
def _make_dirs(target: Path, entries: tuple[FileEntry, ...]) -> None:
    """Create every directory the entries need, one component at a time, refusing to pass
    through a link: with --overwrite the target may hold links that lead outside it."""
    made: set[str] = set()
    for entry in entries:
        relative = entry.path if entry.type == "dir" else entry.path.rpartition("/")[0]
        parts = relative.split("/") if relative else []
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if prefix in made:
                continue
            path = target / prefix
            if path.is_symlink():
                raise ManifestError(
                    f"refusing to restore {entry.path!r}: {path} is a link, "
                    f"which could lead outside {target}"
                )
            path.mkdir(exist_ok=True)
            made.add(prefix)


@_writes_target
def _create_temp(temp: Path) -> None:
    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))


@_writes_target
def _write_at(temp: Path, offset: int, data: bytes) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_NOFOLLOW)  # no O_CREAT: a removed temp stays removed
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@_writes_target
def _write_whole(entry: FileEntry, final: Path, data: bytes, sha256: str) -> None:
    _check(entry, len(data), sha256)
    temp = _temp_name(final)
    try:
        with open(
            os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600), "wb"
        ) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _place(entry, temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@_writes_target
def _check_and_place(pending: _PendingFile) -> None:
    digest = hashlib.sha256()
    size = 0
    with open(pending.temp, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
            size += len(block)
        os.fsync(f.fileno())
    _check(pending.entry, size, digest.hexdigest())
    _place(pending.entry, pending.temp, pending.final)


def _check(entry: FileEntry, size: int, sha256: str) -> None:
    if size != entry.size or sha256 != entry.sha256:
        raise IntegrityError(
            f"{entry.path}: restored {size} bytes hashing to {sha256[:12]}, "
            f"but the backup recorded {entry.size} bytes hashing to {entry.sha256[:12]}"
        )


def _place(entry: FileEntry, temp: Path, final: Path) -> None:
    _owner_and_xattrs(entry, temp)  # before the chmod: a chown clears set-user-ID bits
    os.chmod(temp, entry.mode)
    os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns))
    os.replace(temp, final)


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name[:100]}{TEMP_MARK}{secrets.token_hex(6)}")


@_writes_target
def _finish_tree(target: Path, entries: tuple[FileEntry, ...], leaders: set[str]) -> None:
    # Hard links and then symlinks come after every file, so no write can pass through a link;
    # directory modes and mtimes come last and deepest first, since adding to a directory
    # changes its mtime.
    for entry in entries:
        if entry.hardlink in leaders:
            path = target / entry.path
            temp = _temp_name(path)
            os.link(target / entry.hardlink, temp, follow_symlinks=False)
            os.replace(temp, path)
    for entry in entries:
        if entry.type == "symlink":
            path = target / entry.path
            temp = _temp_name(path)
            os.symlink(entry.target, temp)
            _owner_and_xattrs(entry, temp)
            os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            os.replace(temp, path)
    for entry in sorted(entries, key=lambda e: e.path.count("/"), reverse=True):
        if entry.type == "dir":
            path = target / entry.path
            _owner_and_xattrs(entry, path)
            os.chmod(path, entry.mode)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))


def _owner_and_xattrs(entry: FileEntry, path: Path) -> None:
    problems = apply_owner_and_xattrs(
        str(path), uid=entry.uid, gid=entry.gid, xattrs=entry.xattrs, as_root=os.geteuid() == 0
    )
    for problem in problems:  # the bytes are restored; what is missing is said
        log.warning("%s: %s", entry.path, problem)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
