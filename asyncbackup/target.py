"""The restore target's side of a restore: blocking file-system calls, run in worker threads.

Every call works from directory descriptors (``dirfd.DirectoryTree``): no path longer than one
name is ever passed to the kernel, so paths beyond PATH_MAX restore, and a directory of the
target swapped for a link while the restore runs is refused, never followed. A file is written
under a short random temporary name (``TEMP_MARK`` + 16 hex digits: it fits beside any final
name, even one of 255 bytes) in its final directory, and renamed into place only once whole.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from asyncbackup.dirfd import (
    PROC_FD,
    Directory,
    DirectoryTree,
    NotADirectoryBeneath,
    has_proc_fd,
)
from asyncbackup.errors import ConfigError, IntegrityError, ManifestError, TargetError
from asyncbackup.manifest import ROOT_PATH, FileEntry
from asyncbackup.metadata import apply_owner_and_xattrs

log = logging.getLogger("asyncbackup")
TEMP_MARK = ".asyncbackup-"
"""Temporary names are this and 16 hex digits; a killed restore's leftovers are found by it."""
_TEMP_NAME = re.compile(r"\.asyncbackup-[0-9a-f]{16}")
_CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_BLOCK = 1024 * 1024
_RERUN = "then run the restore again with --overwrite (files already in place are kept)"
_ADVICE = {
    errno.ENOSPC: f"no space left on the device: free some space or restore elsewhere, {_RERUN}",
    errno.EDQUOT: f"disk quota exceeded: free some space or restore elsewhere, {_RERUN}",
    errno.EACCES: "permission denied: restore as a user who may write there, or choose another "
    "target directory",
    errno.EPERM: "operation not permitted: restore as a user who may write there, or choose "
    "another target directory",
    errno.EROFS: "the file system is read-only: restore into a writable directory",
    errno.EISDIR: f"a directory is in the way of a file of the backup: move it away, {_RERUN}",
}


def temp_name() -> str:
    return f"{TEMP_MARK}{secrets.token_hex(8)}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary name a restore gives a file it is writing."""
    return _TEMP_NAME.fullmatch(name) is not None


def split(path: str) -> tuple[str, str]:
    """``a/b/c`` as (``a/b``, ``c``); a name at the top as ("", name)."""
    parent, _, name = path.rpartition("/")
    return parent, name


@contextmanager
def writing(where: Path) -> Iterator[None]:
    """Turn the file system's errors while writing ``where`` into ``TargetError``, saying what
    to do about each."""
    try:
        yield
    except NotADirectoryBeneath:
        raise
    except OSError as exc:
        advice = _ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
        raise TargetError(f"cannot write {where}: {advice}") from exc


def prepare(target: Path, overwrite: bool) -> tuple[DirectoryTree, bool]:
    """Create ``target`` if needed and open it; the tree of its directories, and whether it
    held anything already.

    Raises:
        ConfigError: it is not a directory, or is not empty and ``overwrite`` is False.
        TargetError: it cannot be created or opened.
    """
    target = target.absolute()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"restore target {target} exists and is not a directory")
    with writing(target):
        target.mkdir(parents=True, exist_ok=True)
        root = Directory.open_root(target)
        occupied = bool(os.listdir(root.fd))
    if occupied and not overwrite:
        raise ConfigError(
            f"restore target {target} is not empty: restore into an empty or new directory, "
            "or pass --overwrite to replace what is there"
        )
    return DirectoryTree(root), occupied


def directory(tree: DirectoryTree, path: str, of: str, *, create: bool = False) -> Directory:
    """The directory ``path`` of the target, for the entry ``of``.

    Raises:
        ManifestError: a link or a file stands where the backup has a directory.
        TargetError: it cannot be created or opened.
    """
    try:
        with writing(tree.root.path / path):
            return tree.get(path, create=create)
    except NotADirectoryBeneath as exc:
        raise ManifestError(
            f"refusing to restore {of!r}: {exc.filename} is a link or a file where the backup "
            f"has a directory, and a link could lead outside {tree.root.path}; move it away, "
            "or restore into an empty directory"
        ) from None


def make_dirs(tree: DirectoryTree, entries: tuple[FileEntry, ...]) -> None:
    """Create every directory the entries need (those they imply too), through descriptors."""
    for entry in entries:
        relative = entry.path if entry.type == "dir" else split(entry.path)[0]
        if relative and relative != ROOT_PATH:
            directory(tree, relative, entry.path, create=True)


def remove_leftovers(tree: DirectoryTree, entries: tuple[FileEntry, ...]) -> int:
    """Remove the temporary files that killed restores left in the directories this backup
    restores into; how many. Only names of the restore's own pattern are touched."""
    removed = 0
    dirs = {ROOT_PATH} | {e.path for e in entries if e.type == "dir"}
    for path in sorted(dirs):
        try:
            here = tree.get(path)
        except OSError:
            continue  # not there (yet): nothing of a restore's can be in it
        with writing(here.path):
            for name in os.listdir(here.fd):
                if is_temp_name(name):
                    os.unlink(name, dir_fd=here.fd)
                    removed += 1
    return removed


def create_temp(parent: Directory, name: str, size: int, final: str) -> None:
    """Create the temporary file ``name`` for the file ``final``: ``size`` bytes, all of it a
    hole until written."""
    with writing(parent.path / final):
        fd = os.open(name, _CREATE, 0o600, dir_fd=parent.fd)
        try:
            os.ftruncate(fd, size)  # chunks of zeros are never written: they stay holes
        finally:
            os.close(fd)


def write_at(parent: Directory, name: str, offset: int, data: bytes, final: str) -> None:
    """Write ``data`` at ``offset`` of the temporary file ``name`` (of the file ``final``)."""
    with writing(parent.path / final):
        # No O_CREAT: a temporary file removed by a failed restore stays removed.
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)


def write_whole(parent: Directory, final: str, entry: FileEntry, data: bytes, sha256: str) -> None:
    """Write a file of at most one chunk, check it, and put it in place."""
    check(entry, len(data), sha256)
    temp = temp_name()
    with writing(parent.path / final):
        fd = os.open(temp, _CREATE, 0o600, dir_fd=parent.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                _finish_file(fd, entry, parent, temp)
            finally:
                os.close(fd)
            os.replace(temp, final, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
        except BaseException:
            _unlink_quietly(parent, temp)
            raise


def check_and_place(
    parent: Directory, temp: str, final: str, entry: FileEntry, *, size: int, sha256: str
) -> None:
    """Check the temporary file's size and sha256 (hashed as its chunks landed: ``size`` and
    ``sha256``) and its length on disk, then put it in place."""
    with writing(parent.path / final):
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            check(entry, size, sha256)
            check(entry, os.fstat(fd).st_size, sha256)  # nothing wrote past its end
            _finish_file(fd, entry, parent, temp)
        finally:
            os.close(fd)
        os.replace(temp, final, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)


def already_in_place(parent: Directory, name: str, entry: FileEntry) -> bool:
    """Whether ``name`` is a regular file (not a link) with the entry's size and sha256, hashed
    here; if so, its mode and mtime are set to the backup's. Size and mtime alone prove nothing."""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=parent.fd)
    except OSError:
        return False  # missing, a link, or unreadable: restored from the store
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        if _hash_fd(fd) != (entry.size, entry.sha256):
            return False
        with writing(parent.path / name):
            os.chmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return True
    finally:
        os.close(fd)


def check(entry: FileEntry, size: int, sha256: str) -> None:
    if size != entry.size or sha256 != entry.sha256:
        raise IntegrityError(
            f"{entry.path}: restored {size} bytes hashing to {sha256[:12]}, "
            f"but the backup recorded {entry.size} bytes hashing to {entry.sha256[:12]}"
        )


def _finish_file(fd: int, entry: FileEntry, parent: Directory, name: str) -> None:
    os.fsync(fd)
    _owner_and_xattrs(entry, parent, name)  # before the chmod: a chown clears set-user-ID bits
    os.chmod(fd, entry.mode)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))  # last: nothing writes after it


def _hash_fd(fd: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while block := os.pread(fd, _READ_BLOCK, size):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def remove_temp(parent: Directory, temp: str) -> None:
    _unlink_quietly(parent, temp)


def _unlink_quietly(parent: Directory, name: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=parent.fd)


def finish_tree(tree: DirectoryTree, entries: tuple[FileEntry, ...], leaders: set[str]) -> None:
    """Link the other names of hard-linked files (``leaders``: the first names, in place),
    create the symlinks, then set every directory's owner, mode and mtime, the root's last."""
    # Hard links and then symlinks come after every file, so no write can pass through a link;
    # directory modes and mtimes come last and deepest first, since adding to a directory
    # changes its mtime.
    for entry in entries:
        if entry.type == "file" and entry.hardlink in leaders:
            _hard_link(tree, entry)
    for entry in entries:
        if entry.type == "symlink":
            parent_path, name = split(entry.path)
            parent = directory(tree, parent_path, entry.path)
            temp = temp_name()
            with writing(parent.path / name):
                os.symlink(entry.target, temp, dir_fd=parent.fd)
                try:
                    _owner_and_xattrs(entry, parent, temp)
                    os.utime(
                        temp,
                        ns=(entry.mtime_ns, entry.mtime_ns),
                        dir_fd=parent.fd,
                        follow_symlinks=False,
                    )
                    os.replace(temp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
                except BaseException:
                    _unlink_quietly(parent, temp)
                    raise
    dirs = [e for e in entries if e.type == "dir"]
    for entry in sorted(dirs, key=_depth, reverse=True):
        here = tree.root if entry.path == ROOT_PATH else directory(tree, entry.path, entry.path)
        with writing(here.path):
            if entry.path != ROOT_PATH:
                parent_path, name = split(entry.path)
                _owner_and_xattrs(entry, directory(tree, parent_path, entry.path), name)
            else:  # the target itself: a path the user gave, short enough
                _owner_and_xattrs(entry, None, str(tree.root.path))
            os.chmod(here.fd, entry.mode)
            os.utime(here.fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _hard_link(tree: DirectoryTree, entry: FileEntry) -> None:
    first_parent, first_name = split(entry.hardlink)
    source = directory(tree, first_parent, entry.path)
    parent_path, name = split(entry.path)
    parent = directory(tree, parent_path, entry.path)
    temp = temp_name()
    with writing(parent.path / name):
        os.link(
            first_name,
            temp,
            src_dir_fd=source.fd,
            dst_dir_fd=parent.fd,
            follow_symlinks=False,
        )
        try:
            os.replace(temp, name, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
        except BaseException:
            _unlink_quietly(parent, temp)
            raise


def _owner_and_xattrs(entry: FileEntry, parent: Directory | None, name: str) -> None:
    """Give ``name`` in ``parent`` (a path, without one) the entry's owner (as root) and
    extended attributes. Those calls take a path, never a descriptor with
    ``follow_symlinks=False``: the path goes through ``/proc/self/fd``, so it stays one name
    long, however deep the directory."""
    if entry.uid is None and not entry.xattrs:
        return
    shown = name if parent is None else str(parent.path / name)
    path = shown
    if parent is not None and has_proc_fd():
        path = f"{PROC_FD}/{parent.fd}/{name}"
    problems = apply_owner_and_xattrs(
        path, uid=entry.uid, gid=entry.gid, xattrs=entry.xattrs, as_root=os.geteuid() == 0
    )
    for problem in problems:  # the bytes are restored; what is missing is said
        log.warning("%s: %s", entry.path, problem.replace(path, shown))


def _depth(entry: FileEntry) -> int:
    return -1 if entry.path == ROOT_PATH else entry.path.count("/")


def delete_extras(tree: DirectoryTree, entries: tuple[FileEntry, ...]) -> int:
    """Remove what the target holds and the backup does not (as ``rsync --delete``), and
    whatever stands where the backup has an entry of another kind (a file where it has a
    directory, a directory where it has a file); how many entries were removed. Links are
    removed, never followed; a directory is removed whole."""
    kinds = {e.path: e.type for e in entries}
    removed = 0
    pending = [""]
    while pending:
        relative = pending.pop()
        here = tree.get(relative)
        with writing(here.path):
            for name in sorted(os.listdir(here.fd)):
                path = f"{relative}/{name}" if relative else name
                st = os.stat(name, dir_fd=here.fd, follow_symlinks=False)
                is_dir = stat.S_ISDIR(st.st_mode)
                want = kinds.get(path)
                if want == "dir" and is_dir:
                    pending.append(path)
                    continue
                if want is not None and (want == "dir") == is_dir:
                    continue  # a file or link that the restore replaces
                if is_dir:
                    shutil.rmtree(name, dir_fd=here.fd)
                else:
                    os.unlink(name, dir_fd=here.fd)
                removed += 1
    return removed
