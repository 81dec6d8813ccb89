"""An incremental backup's parent: which files are unchanged since it, so they are not read.

As restic does with its parent snapshot: a regular file whose path, size, mtime, ctime and inode
all equal its entry in the parent is not opened; its entry (size, sha256, chunk refs) is taken
from the parent, with the mode and times the walk saw now. Why each field:

- size and mtime: what every tool compares; an editor or ``cp`` changes both.
- ctime: a file can be rewritten and its mtime put back by hand (``touch -d``, ``rsync -t``,
  ``tar x``); nothing but the kernel sets ctime, and any write or ``utime`` moves it.
- inode: a file replaced by another (``mv new old``, a package upgrade) whose size and times
  happen to match is a new inode.

``--ignore-ctime`` and ``--ignore-inode`` drop the last two, for file systems where they are not
stable (network file systems and FUSE mounts may change inode numbers across mounts, some copy
tools reset ctime). ``--force`` reads every file. A parent written before format 3 has no ctime
or inode: its files are read (unless both are ignored), which is always safe.

Taking an entry from the parent also takes the chunk refs it names as stored: see
``BackupJob`` for why that is safe (the parent is a committed MANIFEST, and prune never removes
what a committed MANIFEST names), and what a damaged parent costs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
from collections.abc import Iterable, Set

import msgspec

from asyncbackup.backup_options import ChangeDetection
from asyncbackup.catalog import find_newest
from asyncbackup.errors import ConfigError, ManifestError, ObjectNotFoundError
from asyncbackup.freeing import drain
from asyncbackup.layout import digest_of_ref
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.metadata import Xattrs
from asyncbackup.packs import PackIndex
from asyncbackup.repository import Repository
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
SPOT_CHECKS = 32
"""How many of the parent's chunks, drawn at random, each incremental backup checks are in the
store (one 1-byte range GET each) before it trusts the others."""


ENTRIES_PER_TRIP = 1000
"""Parent entries taken per worker-thread trip: under a millisecond (see ``manifest_reader``)."""


class Parent:
    """The file entries of the parent backup by path, compared with what the walk finds."""

    def __init__(self, manifest: Manifest, rules: ChangeDetection) -> None:
        """An empty parent: ``Parent.of`` fills it."""
        self.name = manifest.name
        self.rules = rules
        self._files: dict[str, FileEntry] = {}
        self.refs: set[str] = set()
        self.sample: list[str] = []  # what ``spot_check`` checks
        self.format_version = manifest.format_version
        self.places = PackIndex()  # where its packed chunks lie: its INDEX, once read

    @classmethod
    async def of(cls, manifest: Manifest, rules: ChangeDetection) -> Parent:
        """The parent ``manifest``, its entries taken in bounded worker-thread trips with the
        event loop free between them, as its MANIFEST was parsed: 100,000 entries in one call
        would hold the loop at every switch of the GIL for a tenth of a second."""
        parent = cls(manifest, rules)
        entries = manifest.entries
        for start in range(0, len(entries), ENTRIES_PER_TRIP):
            await to_thread(parent._take, entries[start : start + ENTRIES_PER_TRIP])
        parent.sample = random.sample(list(parent.refs), min(SPOT_CHECKS, len(parent.refs)))
        return parent

    def _take(self, entries: Iterable[FileEntry]) -> None:
        files, refs = self._files, self.refs
        for entry in entries:
            if entry.type == "file":
                files[entry.path] = entry
                refs.update(entry.chunks)

    def unchanged(self, path: str, st: os.stat_result) -> FileEntry | None:
        """The parent's entry for ``path`` with the digests of its chunks, if the file at
        ``path`` (as ``st``, its lstat, says) is unchanged since; else None: read it."""
        old = self._files.get(path)
        if old is None or self.rules.force:
            return None
        if old.size != st.st_size or old.mtime_ns != st.st_mtime_ns:
            return None
        if not self.rules.ignore_ctime and (not old.ctime_ns or old.ctime_ns != st.st_ctime_ns):
            return None
        if not self.rules.ignore_inode and (not old.inode or old.inode != st.st_ino):
            return None
        return old

    def reusable(
        self, path: str, st: os.stat_result, *, xattrs: Xattrs, trusted: Set[str] | None
    ) -> FileEntry | None:
        """The new backup's entry for the file at ``path`` (as ``st``, its lstat, says), if it
        is unchanged since the parent, with its chunks as refs (final: the MANIFEST names them
        as they are); else None: read it. ``trusted``: the refs a backup whose parent failed its
        spot check found listed (an entry naming another is read again); None: the parent's
        refs are trusted. Runs in the walk's worker thread: it only reads.

        When nothing the entry records has moved (owner and mode move ctime, so unless
        ``--ignore-ctime`` they cannot differ), the parent's entry object itself is returned:
        an unchanged file costs no new object and no encoding."""
        old = self.unchanged(path, st)
        if old is None:
            return None
        if trusted is not None and not all(ref in trusted for ref in old.chunks):
            return None  # a chunk of it is not in the store (the parent is damaged): read it
        mode = stat.S_IMODE(st.st_mode)
        if (
            old.mode == mode
            and old.ctime_ns == st.st_ctime_ns
            and old.inode == st.st_ino
            and old.uid == st.st_uid
            and old.gid == st.st_gid
            and old.xattrs == xattrs
            and not old.hardlink
        ):
            return old
        return entry_from_parent(old, st, mode, chunks=old.chunks, xattrs=xattrs)

    async def forget(self) -> None:
        """Drop the entries once the walk is done: their memory is the backup's to use. A
        part at a time (``freeing.drain``): a changed file's old entry is freed here, and
        100,000 of them in one call hold the GIL, hence the event loop, for tens of ms."""
        await drain(self._files)

    async def release(self) -> None:
        """Free what this parent holds (entries, refs, places), a part at a time: once the
        backup is done with it."""
        await drain(self._files, self.refs, self.places.places)


def entry_from_parent(
    old: FileEntry,
    st: os.stat_result,
    mode: int,
    *,
    chunks: tuple[str, ...],
    xattrs: Xattrs = (),
) -> FileEntry:
    """The new backup's entry for an unchanged file: the parent's content (size, hash, and
    ``chunks``: its refs as they are, or as digests for a file the loop handles, like every
    entry of a running job) with the metadata the walk saw now."""
    return msgspec.structs.replace(
        old,
        mode=mode,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        uid=st.st_uid,
        gid=st.st_gid,
        xattrs=xattrs,
        hardlink="",
        chunks=chunks,
    )


def digests(refs: tuple[str, ...]) -> tuple[str, ...]:
    """Chunk refs as the digests a running job names them by."""
    return tuple(digest_of_ref(r) for r in refs)


async def find_parent(
    repo: Repository,
    *,
    explicit: str | None,
    host: str,
    source: str,
    rules: ChangeDetection,
    chunk_size: int,
    concurrency: int,
) -> Parent | None:
    """The parent of a backup of ``host``:``source``: backup ``explicit`` if given, else the
    newest backup of the same host and source; None for a first backup, with ``--force``, or
    when the parent cannot be used (each said in a log line).

    Raises:
        ConfigError: ``explicit`` names no backup, or one whose MANIFEST cannot be read.
    """
    if rules.force:
        log.info("--force: every file is read, and no parent is trusted")
        return None
    if explicit is not None:
        try:
            manifest = await repo.load_manifest(explicit)
        except ManifestError as exc:
            raise ConfigError(
                f"--parent {explicit}: {exc}; name another backup as the parent, or leave "
                "--parent out to use the newest backup of this host and source"
            ) from None
    else:
        newest = await find_newest(repo, host=host, source=source, concurrency=concurrency)
        if newest is None:
            log.info("no earlier backup of %s:%s: every file is read", host, source)
            return None
        try:
            manifest = await repo.load_manifest(newest.name)
        except ManifestError as exc:
            log.warning("the parent backup cannot be read, so every file is read: %s", exc)
            return None
    if manifest.chunk_size != chunk_size:
        log.warning(
            "the parent backup %s was made with chunks of %d bytes, this one uses %d: "
            "every file is read",
            manifest.name,
            manifest.chunk_size,
            chunk_size,
        )
        return None
    log.info("parent backup %s: files unchanged since it are not read", manifest.name)
    return await Parent.of(manifest, rules)


async def spot_check(repo: Repository, parent: Parent) -> list[str]:
    """The refs of ``parent.sample`` (chunks the parent names, drawn at random) that the store
    does not hold: a constant cost, whatever the size of the parent or the store.

    Under the repository protocol none can be missing; a chunk lost behind its back (deleted by
    hand, a lifecycle rule, a bucket restored from an old copy) can. Loss of many chunks is
    caught almost surely, one lost chunk among ``n`` with odds ``SPOT_CHECKS / n`` per backup;
    ``verify`` finds the rest and ``backup --force`` repairs them.
    """
    missing: list[str] = []

    async def check(ref: str) -> None:
        try:
            await repo.probe_chunk(ref, place=parent.places.get(ref))
        except ObjectNotFoundError:
            missing.append(ref)

    async with asyncio.TaskGroup() as group:
        for ref in parent.sample:
            group.create_task(check(ref))
    return sorted(missing)
