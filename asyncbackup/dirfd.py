"""Directories held open by descriptor, so that no call passes a path longer than one name.

A path of 8,000 bytes cannot be opened (PATH_MAX is 4,096), but each of its names can be, one
directory at a time (``openat``). Working from descriptors also closes a race: a directory we
hold open stays that directory even if its name is swapped for a link meanwhile, and every
directory is opened with ``O_NOFOLLOW``, so a link in its place is refused, never followed.

A ``Directory`` closes its descriptor when the last reference to it goes (CPython frees it at
once). The invariant that makes this safe: a thread that uses ``d.fd`` holds ``d``, so the
descriptor cannot be closed, and its number reused, under that thread's feet.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import weakref
from collections import OrderedDict
from contextlib import suppress
from pathlib import Path

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PROC_FD = "/proc/self/fd"
"""``PROC_FD/<fd>/<name>`` names ``name`` in the open directory ``fd`` for the few calls that
take only a path (owners and extended attributes of a link), one name long at any depth."""
_KEPT_OPEN = 64  # the most recently used directories stay open: siblings restore from them


@functools.cache
def has_proc_fd() -> bool:
    """Whether ``PROC_FD`` exists here (Linux with /proc mounted); asked once."""
    return os.path.isdir(PROC_FD)


class NotADirectoryBeneath(OSError):
    """A name that should be a directory is a link, or something else: refused, never followed."""


class Directory:
    """One open directory and the path it was reached by (for messages only)."""

    __slots__ = ("__weakref__", "fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open_root(cls, path: Path) -> Directory:
        """Open ``path`` itself (following a link there: the caller named it).

        Raises:
            OSError: it cannot be opened, or is not a directory.
        """
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)

    def child(self, name: str) -> Directory:
        """Open the directory ``name`` in this one, refusing a link.

        Raises:
            NotADirectoryBeneath: ``name`` is a link or not a directory.
            FileNotFoundError: there is no ``name``.
            OSError: anything else the open met.
        """
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotADirectoryBeneath(
                    exc.errno, "a link or file where a directory belongs", str(self.path / name)
                ) from exc
            raise
        return Directory(fd, self.path / name)

    def __del__(self) -> None:
        with suppress(OSError, AttributeError):  # closed already, or never opened
            os.close(self.fd)


class DirectoryTree:
    """The directories below one root, opened on demand from the nearest open ancestor.

    Thread-safe: restore's worker threads ask for directories at once. At most ``_KEPT_OPEN``
    directories are kept open by the tree itself; others stay open while someone holds them.
    """

    def __init__(self, root: Directory) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._alive: weakref.WeakValueDictionary[str, Directory] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[str, Directory] = OrderedDict()

    def cached(self, relative: str) -> Directory | None:
        """The directory at ``relative`` if it is open already; no system call, so the event
        loop may ask."""
        return self.root if relative in ("", ".") else self._alive.get(relative)

    def get(self, relative: str, *, create: bool = False) -> Directory:
        """The directory at ``relative`` ("" or "." is the root), created (mode 0700, the
        restore sets the real mode last) if ``create`` and missing.

        Raises:
            NotADirectoryBeneath: a component is a link or not a directory.
            FileNotFoundError: a component is missing and ``create`` is False.
        """
        if relative in ("", "."):
            return self.root
        with self._lock:
            found = self._alive.get(relative)
            if found is not None:
                self._remember(relative, found)
                return found
            parts = relative.split("/")
            depth, current = 0, self.root
            for i in range(len(parts) - 1, 0, -1):  # the nearest ancestor already open
                ancestor = self._alive.get("/".join(parts[:i]))
                if ancestor is not None:
                    depth, current = i, ancestor
                    break
            for i in range(depth, len(parts)):
                current = _open_or_make(current, parts[i], create)
                self._remember("/".join(parts[: i + 1]), current)
            return current

    def _remember(self, relative: str, directory: Directory) -> None:
        self._alive[relative] = directory
        self._recent[relative] = directory
        self._recent.move_to_end(relative)
        while len(self._recent) > _KEPT_OPEN:
            self._recent.popitem(last=False)


def _open_or_make(parent: Directory, name: str, create: bool) -> Directory:
    try:
        return parent.child(name)
    except FileNotFoundError:
        if not create:
            raise
    with suppress(FileExistsError):  # made meanwhile; ``child`` below checks what it is
        os.mkdir(name, 0o700, dir_fd=parent.fd)
    return parent.child(name)


def open_beneath(root: Path, relative: str, flags: int) -> int:
    """Open ``root/relative`` one name at a time, following no link on the way; a descriptor.

    Raises:
        OSError: a component is missing, a link, or cannot be opened.
    """
    parts = relative.split("/")
    current = Directory.open_root(root)
    for name in parts[:-1]:
        current = current.child(name)
    return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current.fd)
