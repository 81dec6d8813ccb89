"""Walking the source tree as a stream, one directory listing at a time, never following links.

Every directory is listed and every name is stat'ed through the descriptor of the directory that
holds it (see ``dirfd.py``): a tree deeper than PATH_MAX walks, and a directory swapped for a
link while the backup runs is refused rather than followed out of the source.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import msgspec

from asyncbackup.dirfd import DIRECTORY_FLAGS, PROC_FD, Directory, NotADirectoryBeneath, has_proc_fd
from asyncbackup.errors import SourceAccessError, SourceError, SourceVanishedError
from asyncbackup.threads import to_thread

T = TypeVar("T")
Kind = Literal["file", "dir", "symlink", "special"]
Unlistable = Callable[[str, SourceError], None]
"""Told of a directory (its relative path) that could not be listed, and why."""
if TYPE_CHECKING:  # chunking.py imports this module: every command, so nothing heavy here
    from asyncbackup.excludes import Decision, Probe

    Decide = Callable[[str, Kind, os.stat_result, Probe], Decision]
    """Asked about each entry (path, kind, lstat, a probe inside it) before it is yielded."""
ROOT = "."
"""The path of the source directory itself, as the walk yields it and as a MANIFEST records it."""
_ACCESS = (errno.EACCES, errno.EPERM)


class SourceEntry(msgspec.Struct, frozen=True, gc=False):
    """One thing found under the source root, with its full ``lstat``. ``path`` is relative and
    POSIX (``ROOT`` for the root itself); names that are not UTF-8 keep their bytes as surrogate
    escapes, so they round-trip. ``parent`` is the open directory that holds it (None for the
    root): open the entry through ``open``, never through a path that could exceed PATH_MAX.

    Kept out of the garbage collector (``gc=False``; it holds no container that could lead
    back to it): the walk runs thousands of entries ahead of the uploads, so entries outlive
    the young collections and each one tracked added to the count that brings on a full
    collection, which walks every tracked object of the process with the GIL held (36 ms
    in ``python -m benchmarks.loop_stall``'s first backup, two of them).
    """

    path: str
    kind: Kind
    stat: os.stat_result
    target: str | None = None  # the link text of a symlink
    parent: Directory | None = None  # set by ``walk``; for the root, the root itself
    descend: bool = True  # False: a directory recorded without what it holds

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def shown(self) -> Path:
        """The entry's absolute path, for messages only (it may be longer than PATH_MAX)."""
        assert self.parent is not None
        return self.parent.path / self.name

    @property
    def reachable(self) -> str:
        """A path to the entry for calls that take only a path (extended attributes): through
        ``/proc/self/fd``, one name long however deep the entry, where Linux offers it."""
        assert self.parent is not None
        if has_proc_fd():
            return f"{PROC_FD}/{self.parent.fd}/{self.name}"
        return str(self.shown)

    def open(self, flags: int) -> int:
        """Open this entry through its directory's descriptor, never following a link in its
        place; a descriptor.

        Raises:
            OSError: it cannot be opened.
        """
        assert self.parent is not None
        return os.open(self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.parent.fd)


@dataclass
class Batch(Generic[T]):
    """What one worker-thread trip of the walk found: ``entries`` for the caller to handle one
    by one, and ``taken``, what ``take`` made of the entries it took (never in ``entries``)."""

    entries: list[SourceEntry] = field(default_factory=list)
    taken: list[T] = field(default_factory=list)
    unlistable: list[tuple[str, SourceError]] = field(default_factory=list)
    directories: int = 0
    done: bool = False


async def walk_batches(
    root: Path,
    *,
    decide: Decide | None = None,
    unlistable: Unlistable | None = None,
    take: Callable[[SourceEntry], T | None] | None = None,
) -> AsyncGenerator[Batch[T], None]:
    """The walk, a batch of directories at a time: the root itself (path ``ROOT``) first, then
    every entry below it, each directory before its contents, names in sorted order.

    Each batch is one worker-thread trip that lists up to ``DIRECTORIES_PER_TRIP`` directories
    (fewer once it found ``ENTRIES_PER_TRIP`` entries), and the next trip runs while the caller
    handles this one: the event loop pays one wake-up per batch, not one per directory or file.
    ``take`` (run in that thread, so it must not touch the loop's state) may take an entry
    whole: what it returns (not None) goes to ``Batch.taken`` instead of ``Batch.entries``.
    An incremental backup takes unchanged files this way, so none costs the loop an await.

    ``decide`` (run in the thread too) leaves entries out, and directories unlisted; the root
    is always taken. ``unlistable`` is told of a directory below the root that cannot be
    listed (or vanished since its parent was), and the walk goes on without its contents.

    Raises:
        SourceError: the root cannot be opened or listed; or a directory below it, without
            ``unlistable``.
        SourceAccessError: ... because permission is denied (a rerun will not help).
    """
    top, st = await to_thread(_open_root, root)
    walker: _Walker[T] = _Walker(top, decide, take, tolerate=unlistable is not None)
    first: Batch[T] = Batch()
    walker.keep(first, SourceEntry(ROOT, "dir", st, parent=top))
    yield first
    ahead = asyncio.ensure_future(to_thread(walker.step))
    try:
        while True:
            batch = await ahead
            if not batch.done:  # the next trip lists on while the caller handles this batch
                ahead = asyncio.ensure_future(to_thread(walker.step))
            for relative, error in batch.unlistable:
                assert unlistable is not None
                unlistable(relative, error)
            yield batch
            if batch.done:
                return
    finally:
        # A caller that stops early: the trip in flight finishes in its thread, unheard.
        ahead.cancel()


DIRECTORIES_PER_TRIP = 64
"""At most this many directories listed per worker-thread trip: each stays open while the
caller handles its entries, so this (times two: one batch ahead) bounds what a batch holds."""
ENTRIES_PER_TRIP = 2048


class _Walker(Generic[T]):
    """The walk's state, touched only by its worker-thread trips, one at a time."""

    def __init__(
        self,
        top: Directory,
        decide: Decide | None,
        take: Callable[[SourceEntry], T | None] | None,
        *,
        tolerate: bool,
    ) -> None:
        # Each pending directory with the open directory that holds it: only the ancestors of
        # what is being walked (and the directories of entries still to handle) are open.
        self.pending: list[tuple[Directory, str]] = [(top, "")]
        self.decide = decide
        self.take = take
        self.tolerate = tolerate

    def keep(self, batch: Batch[T], entry: SourceEntry) -> None:
        taken = self.take(entry) if self.take is not None else None
        if taken is None:
            batch.entries.append(entry)
        else:
            batch.taken.append(taken)

    def step(self) -> Batch[T]:
        """List directories until the batch is full or the walk is done."""
        batch: Batch[T] = Batch()
        found = 0
        while self.pending and batch.directories < DIRECTORIES_PER_TRIP:
            if found >= ENTRIES_PER_TRIP:
                break
            holder, relative = self.pending.pop()
            batch.directories += 1
            try:
                entries = _scan(holder, relative, self.decide)
            except SourceError as exc:
                if not relative or not self.tolerate:
                    raise
                batch.unlistable.append((relative, exc))
                continue
            found += len(entries)
            for entry in entries:
                self.keep(batch, entry)
            self.pending.extend(
                (_holder(e), e.path) for e in reversed(entries) if e.kind == "dir" and e.descend
            )
        batch.done = not self.pending
        return batch


def _holder(entry: SourceEntry) -> Directory:
    assert entry.parent is not None
    return entry.parent


def _open_root(root: Path) -> tuple[Directory, os.stat_result]:
    try:
        top = Directory.open_root(root)
        return top, os.fstat(top.fd)
    except OSError as exc:
        raise _listing_error(root, exc) from exc


def _scan(holder: Directory, relative: str, decide: Decide | None) -> list[SourceEntry]:
    """List the directory ``relative``, opened through ``holder`` (unless it is the root)."""
    if relative:
        shown = holder.path / relative.rpartition("/")[2]
        try:
            directory = holder.child(relative.rpartition("/")[2])
        except FileNotFoundError as exc:
            raise SourceVanishedError(f"{shown} vanished before it was listed") from exc
        except NotADirectoryBeneath as exc:
            raise SourceError(
                f"{shown} was a directory when its parent was listed and is now a link or a "
                "file: something is changing the source; back it up again once it is quiet"
            ) from exc
        except OSError as exc:
            raise _listing_error(shown, exc) from exc
    else:
        directory = holder
    try:
        with os.scandir(directory.fd) as it:
            names = sorted(e.name for e in it)
    except FileNotFoundError as exc:
        raise SourceVanishedError(f"{directory} vanished before it was listed") from exc
    except OSError as exc:
        raise _listing_error(directory.path, exc) from exc
    found: list[SourceEntry] = []
    for name in names:
        path = f"{relative}/{name}" if relative else name
        try:
            st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            is_link = stat.S_ISLNK(st.st_mode)
            target = os.readlink(name, dir_fd=directory.fd) if is_link else None
        except FileNotFoundError:
            continue  # gone between the listing and the lstat: it is not part of this backup
        except OSError as exc:
            raise unreadable(directory.path / name, exc) from exc
        kind = _kind(st.st_mode)
        decision = decide(path, kind, st, _probe(directory, name)) if decide else "keep"
        if decision != "exclude":
            found.append(
                SourceEntry(path, kind, st, target, parent=directory, descend=decision == "keep")
            )
    return found


def _probe(directory: Directory, name: str) -> Probe:
    """A ``Probe`` inside the directory ``name`` of ``directory``, through descriptors, never
    following a link in its place (opened only if the probe is used: most entries are files)."""

    def probe(inside: str, size: int) -> bytes | None:
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=directory.fd)
        except OSError:
            return None  # not a directory (any more), or unreadable
        try:
            if size == 0:  # is it there at all (of any type, as restic's --exclude-if-present)
                os.stat(inside, dir_fd=fd, follow_symlinks=False)
                return b""
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            marker = os.open(inside, flags, dir_fd=fd)
            try:
                return os.read(marker, size)
            finally:
                os.close(marker)
        except OSError:
            return None  # absent, or a link, or unreadable: not a marker we can trust
        finally:
            os.close(fd)

    return probe


def _listing_error(path: Path, exc: OSError) -> SourceError:
    if isinstance(exc, FileNotFoundError):
        return SourceVanishedError(f"{path} vanished before it was listed")
    if exc.errno in _ACCESS:
        return SourceAccessError(
            f"cannot list directory {path}: {exc.strerror}: give the user running the backup "
            "read and search permission on it, or run the backup as a user who has them"
        )
    return SourceError(f"cannot list directory {path}: {exc.strerror}")


def unreadable(path: Path, exc: OSError, doing: str = "read") -> SourceError:
    """The error for ``exc``, met reading ``path``: what to do about a denied permission."""
    if exc.errno in _ACCESS:
        return SourceAccessError(
            f"cannot {doing} {path}: {exc.strerror}: give the user running the backup read "
            "permission on it, or run the backup as a user who has it"
        )
    return SourceError(f"cannot {doing} {path}: {exc.strerror}")


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"
