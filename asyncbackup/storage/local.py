"""A store in a local directory: each key a file, written atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from asyncbackup.errors import (
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.storage.base import STREAM_PIECE, ListPage, ObjectInfo, ObjectPage, Storage
from asyncbackup.threads import settled, to_thread

MARKER = "asyncbackup-store"
"""The file that marks a directory as a store, written by the first backup. A directory with a
``backups/`` or ``chunks/`` directory is one too: stores made before the marker existed."""
_MARKER_TEXT = b"An asyncbackup store: see docs/design.md. Do not edit what is here.\n"
TEMP_PREFIX = ".tmp-"
"""Objects are written under this name first; listings skip it, keys may not start with '.'."""

_PERMANENT = {
    errno.EACCES: "permission denied: check the store directory's owner and mode",
    errno.EPERM: "operation not permitted: check the store directory's owner and mode",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the store's disk",
    errno.EDQUOT: "disk quota exceeded on the store's disk",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "the key names a directory",
}


class LocalStorage(Storage):
    """Objects as files under ``root``.

    A put writes a temporary file beside the final one, fsyncs it and renames it into place, so
    a crash never leaves half an object under its final key; ``sync`` then fsyncs the directories
    that changed, so a MANIFEST written after it is never more durable than its chunks.
    """

    streams = True

    def __init__(self, root: Path, *, fsync_dir: Callable[[int], None] = os.fsync) -> None:
        """``fsync_dir`` makes one open directory durable; a seam, so a test can count calls."""
        self.root = root.expanduser().absolute()
        self._fsync_dir = fsync_dir
        self.url = self.root.as_uri()
        self._dirty_dirs: set[Path] = set()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: the store path exists and is not a directory")

    def path_of(self, key: str) -> Path:
        """The file that holds ``key``; the key can never name a path outside the root.

        Raises:
            ConfigError: the key is empty, absolute, or has an empty, '.', '..' or hidden part.
        """
        parts = key.split("/")
        if not key or any(not p or p.startswith(".") or "\0" in p for p in parts):
            raise ConfigError(f"invalid key {key!r} for a local store")
        return self.root.joinpath(*parts)

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        path = self.path_of(key)
        # One thread call, not aiofiles' several awaited steps: a cancelled await leaves its
        # thread running, so a step-by-step write could create a temporary file (or open a file
        # descriptor) after our clean-up ran. One call either renames its file into place or
        # removes it, and ``settled`` waits for it. Reads are one call for the same reason.
        with _mapped_errors(self.url, key):
            made_dirs = await settled(_write_atomically, path, data, overwrite)
        self._dirty_dirs.add(path.parent)
        if made_dirs:  # a new directory is durable once the directory holding it is synced
            self._dirty_dirs.update(p for p in path.parent.parents if p.is_relative_to(self.root))

    async def get(self, key: str) -> bytes:
        path = self.path_of(key)
        with _mapped_errors(self.url, key):
            return await to_thread(path.read_bytes)  # one call: no fd left open on cancel

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        path = self.path_of(key)
        with _mapped_errors(self.url, key):
            return await to_thread(_read_range, path, start, length)

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self.path_of(key)
        offset = 0
        while True:
            # One thread call per piece, each opening the file: no descriptor is left open by
            # a consumer that stops early or is cancelled. A chunk's bytes never change.
            with _mapped_errors(self.url, key):
                piece = await to_thread(_read_range, path, offset, STREAM_PIECE)
            if piece:
                yield piece
            if len(piece) < STREAM_PIECE:
                return
            offset += len(piece)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        with _mapped_errors(self.url, prefix):
            objects = await to_thread(self._list, prefix, with_stat=True)
        return objects, None

    async def list_page(self, prefix: str, token: str | None = None) -> ListPage:
        # Keys alone need no stat per file: a backup's listing of a million chunks stays cheap.
        with _mapped_errors(self.url, prefix):
            objects = await to_thread(self._list, prefix, with_stat=False)
        return [o.key for o in objects], None

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        with _mapped_errors(self.url, key):
            try:
                await to_thread(os.remove, path)
            except FileNotFoundError:
                return
            self._dirty_dirs.add(path.parent)
            # Leave no empty directories behind (backups/<name>/ once its MANIFEST is gone).
            parent = path.parent
            try:
                while parent != self.root and not await to_thread(os.listdir, parent):
                    await to_thread(os.rmdir, parent)
                    parent = parent.parent
            except (FileNotFoundError, OSError) as exc:
                # A concurrent delete removed it first, or a write put something in it since:
                # either way our object is gone, which is all a delete promises.
                if not isinstance(exc, FileNotFoundError) and exc.errno != errno.ENOTEMPTY:
                    raise

    async def sync(self) -> None:
        dirs, self._dirty_dirs = self._dirty_dirs, set()
        with _mapped_errors(self.url, "(directory sync)"):
            await to_thread(_fsync_dirs, dirs, self._fsync_dir)

    async def mark_as_repository(self) -> None:
        with _mapped_errors(self.url, MARKER):
            await settled(_write_marker, self.root)

    async def holds_repository(self) -> bool:
        return await to_thread(_holds_repository, self.root)

    async def remove_leftovers(self, older_than: float, *, dry_run: bool = False) -> int:
        # A process killed mid-put leaves its temporary file; a running job's are young.
        with _mapped_errors(self.url, ""):
            return await to_thread(_remove_old_temporaries, self.root, older_than, dry_run)

    def _list(self, prefix: str, *, with_stat: bool) -> list[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*head.split("/")) if head else self.root
        objects: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                if not with_stat:
                    objects.append(ObjectInfo(key, 0, 0.0))
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the directory was read: not there any more
                objects.append(ObjectInfo(key, st.st_size, st.st_mtime))
        objects.sort(key=lambda o: o.key)
        return objects


def _write_atomically(path: Path, data: bytes, overwrite: bool) -> bool:
    """Whether it had to create the object's directory."""
    temp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    made_dirs = False
    try:
        try:
            f = open(temp, "xb")  # noqa: SIM115 - closed below, after the fsync
        except FileNotFoundError:  # the first object in this directory
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs = True
            f = open(temp, "xb")  # noqa: SIM115
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # before the rename: a crash never leaves a short object
        if overwrite:
            os.replace(temp, path)
            return made_dirs
        os.link(temp, path)  # atomic create-only: FileExistsError if the key is taken
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    temp.unlink()  # the link's temporary name
    return made_dirs


def _remove_old_temporaries(root: Path, older_than: float, dry_run: bool) -> int:
    removed = 0
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            try:
                if name.startswith(TEMP_PREFIX) and path.lstat().st_mtime < older_than:
                    if not dry_run:
                        path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # renamed into place, or removed, since the walk saw it
    return removed


def _fsync_dirs(dirs: set[Path], fsync_dir: Callable[[int], None]) -> None:
    for directory in dirs:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fsync_dir(fd)
        finally:
            os.close(fd)


@contextmanager
def _mapped_errors(url: str, key: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise ObjectNotFoundError(f"{url}: no object {key}") from exc
    except FileExistsError as exc:
        raise ObjectExistsError(f"{url}: {key} exists already") from exc
    except OSError as exc:
        reason = _PERMANENT.get(exc.errno or 0)
        if reason is not None:
            raise PermanentStorageError(f"{url}: {key}: {reason} ({exc.strerror})") from exc
        raise TransientStorageError(f"{url}: {key}: {exc}") from exc


def _read_range(path: Path, start: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(length)


def _write_marker(root: Path) -> None:
    if not (root / MARKER).exists():
        with contextlib.suppress(FileExistsError):  # another backup wrote it first: same bytes
            _write_atomically(root / MARKER, _MARKER_TEXT, False)


def _holds_repository(root: Path) -> bool:
    return any((root / name).exists() for name in (MARKER, "backups", "chunks"))
