"""Stores behind one small interface, and ``open_storage(url)`` to pick one by URL.

file:///abs/path or a plain path     LocalStorage
memory://name                        MemoryStorage (tests and embedding; gone with the process)
s3://bucket/prefix                   S3Storage (aiobotocore), imported only when used
gs://bucket/prefix                   GCSStorage (gcloud-aio-storage), imported only when used
"""

from __future__ import annotations

import importlib
import re
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
        meant = _meant_url(url)
        if meant is not None:
            raise ConfigError(
                f"{url}: this looks like a mistyped store URL, not a directory; did you mean "
                f"{meant}? (for a local directory of that name, write ./{url})"
            )
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


_MISTYPED = re.compile(r"(?P<scheme>s3|gs|file|memory)(?::/?(?!/)|//)(?P<rest>.*)", re.IGNORECASE)
"""``s3:/b``, ``s3:b``, ``s3//b``, ``gs:/b``: a scheme with the ``://`` mistyped."""


def _meant_url(text: str) -> str | None:
    """The URL ``text`` was probably meant to be, if it looks like a mistyped one."""
    match = _MISTYPED.fullmatch(text)
    if match is None:
        return None
    scheme, rest = match.group("scheme").lower(), match.group("rest")
    return f"{scheme}:///{rest.lstrip('/')}" if scheme == "file" else f"{scheme}://{rest}"


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


def _check_bucket_name(scheme: str, bucket: str, url: str) -> None:
    """Refuse a bucket name the service would refuse: the server answers such a name with "no
    such bucket", which sends the user looking for a bucket instead of at a typo.

    Raises:
        ConfigError: ``bucket`` breaks the naming rules of S3 or GCS (``scheme``).
    """
    if scheme == "s3":
        ok = _S3_BUCKET.fullmatch(bucket) is not None
        rules = "3 to 63 lowercase letters, digits, '.' and '-'"
    else:
        ok = _GCS_BUCKET.fullmatch(bucket) is not None and (
            len(bucket) <= 63 or all(len(part) <= 63 for part in bucket.split("."))
        )
        rules = "3 to 63 lowercase letters, digits, '-', '_' and '.' (up to 222 with dots)"
    if not ok or ".." in bucket or _IP_ADDRESS.fullmatch(bucket):
        raise ConfigError(
            f"{url}: {bucket!r} is not a valid bucket name: use {rules}, starting and ending "
            "with a letter or digit, not an IP address"
        )


def split_bucket_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b/")``: the bucket, and the key prefix ending in '/'
    (or empty), so keys of one store never run into another's.

    Raises:
        ConfigError: no bucket, an invalid bucket name, or a prefix with empty, '.' or '..'
            parts.
    """
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"{url}: a store URL has no query or fragment")
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"{url}: no bucket; write {parts.scheme}://BUCKET/optional/prefix")
    _check_bucket_name(parts.scheme.lower(), bucket, url)
    path = parts.path.strip("/")
    segments = path.split("/") if path else []
    if any(s in ("", ".", "..") for s in segments):
        raise ConfigError(f"{url}: the prefix has an empty, '.' or '..' part")
    return bucket, "".join(s + "/" for s in segments)
