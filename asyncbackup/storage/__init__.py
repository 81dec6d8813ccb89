"""Stores behind one small interface, and ``open_storage(url)`` to pick one by URL.

file:///abs/path or a plain path     LocalStorage
memory://name                        MemoryStorage (tests and embedding; gone with the process)
s3://bucket/prefix                   S3Storage (aiobotocore), imported only when used
gs://bucket/prefix                   GCSStorage (gcloud-aio-storage), imported only when used
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from asyncbackup.errors import ConfigError
from asyncbackup.storage.base import ListPage, ObjectInfo, ObjectPage, Storage
from asyncbackup.storage.options import StoreOptions

if TYPE_CHECKING:
    from asyncbackup.storage.faulty import FaultyStorage
    from asyncbackup.storage.local import LocalStorage
    from asyncbackup.storage.memory import MemoryStorage

_HOMES = {
    "FaultyStorage": "asyncbackup.storage.faulty",
    "LocalStorage": "asyncbackup.storage.local",
    "MemoryStorage": "asyncbackup.storage.memory",
}
"""Stores that load on first use (asyncio, aiofiles): building the command line's parser imports
``storage.options`` and so this package, and ``asyncbackup --help`` must not pay for them."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'asyncbackup.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "FaultyStorage",
    "ListPage",
    "LocalStorage",
    "MemoryStorage",
    "ObjectInfo",
    "ObjectPage",
    "Storage",
    "StoreOptions",
    "open_storage",
    "split_bucket_url",
]

_SCHEMES = "a path, file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or memory://name"


def open_storage(url: str, options: StoreOptions | None = None) -> Storage:
    """Open the store ``url`` names; use it as ``async with open_storage(url) as store:``.

    Raises:
        ConfigError: the URL is empty, has an unknown scheme, or is malformed.
    """
    options = options if options is not None else StoreOptions()
    if not url:
        raise ConfigError(f"the store URL is empty: give {_SCHEMES}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    from asyncbackup.storage.local import LocalStorage
    from asyncbackup.storage.memory import MemoryStorage

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
    if scheme == "s3":
        from asyncbackup.storage.s3 import S3Storage  # aiobotocore loads only when used

        bucket, prefix = split_bucket_url(url)
        return S3Storage(bucket, prefix, options)
    if scheme == "gs":
        from asyncbackup.storage.gcs import GCSStorage  # gcloud-aio loads only when used

        bucket, prefix = split_bucket_url(url)
        return GCSStorage(bucket, prefix, options)
    raise ConfigError(f"{url}: unknown store scheme {scheme!r}; use {_SCHEMES}")


def split_bucket_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")``: the bucket, and the key prefix ending in '/'
    (or empty), so keys of one store never run into another's.

    Raises:
        ConfigError: no bucket, or a prefix with empty, '.' or '..' parts.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"{url}: a store URL has no query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"{url}: no bucket; write {parts.scheme}://BUCKET/optional/prefix")
    path = parts.path.strip("/")
    segments = path.split("/") if path else []
    if any(s in ("", ".", "..") for s in segments):
        raise ConfigError(f"{url}: the prefix has an empty, '.' or '..' part")
    return bucket, "".join(s + "/" for s in segments)
