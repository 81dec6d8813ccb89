"""Stores behind one small interface, and ``open_storage(url)`` to pick one by URL.

file:///abs/path or a plain path     LocalStorage
memory://name                        MemoryStorage (tests and embedding; gone with the process)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from asyncbackup.errors import ConfigError
from asyncbackup.storage.base import ListPage, Storage
from asyncbackup.storage.faulty import FaultyStorage
from asyncbackup.storage.local import LocalStorage
from asyncbackup.storage.memory import MemoryStorage

__all__ = ["FaultyStorage", "ListPage", "LocalStorage", "MemoryStorage", "Storage", "open_storage"]

_PLANNED = {"s3": "S3", "gs": "Google Cloud Storage"}


def open_storage(url: str) -> Storage:
    """Open the store ``url`` names; use it as ``async with open_storage(url) as store:``.

    Raises:
        ConfigError: the URL is empty, has an unknown scheme, or is malformed.
    """
    if not url:
        raise ConfigError("the store URL is empty: give a path, file:///abs/path or memory://name")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "":
        return LocalStorage(Path(url))
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{url}: a file URL names a local path, as file:///abs/path")
        if not parts.path:
            raise ConfigError(f"{url}: the file URL has no path")
        return LocalStorage(Path(unquote(parts.path)))
    if scheme == "memory":
        return MemoryStorage(url=url)
    if scheme in _PLANNED:
        raise ConfigError(f"{url}: {_PLANNED[scheme]} stores are not supported in this version yet")
    raise ConfigError(
        f"{url}: unknown store scheme {scheme!r}; use a path, file:///abs/path or memory://name"
    )
