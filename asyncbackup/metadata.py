"""What a backup records of an entry beyond its bytes and mode: owner (uid/gid), extended
attributes, and hard links; how the MANIFEST spells them; how a restore puts them back.

Owners are numbers only (``--numeric-owner`` semantics, as tar's): a restore on another host
gives the same uid and gid, whatever names they have there. They are always recorded (the
``lstat`` the walk makes has them) and restored when the restore runs as root, the only user
who may give a file away. Extended attributes cost a listing per entry, so they are recorded
only with ``backup --xattrs``, and restored whenever a backup has them.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
from collections.abc import Mapping
from typing import Any

from asyncbackup.errors import ManifestError
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
Xattrs = tuple[tuple[str, bytes], ...]
"""Extended attributes as (name, value) pairs, sorted by name."""
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)


def read_xattrs(path: str) -> Xattrs:
    """The extended attributes of ``path`` (never following a link in its place); none where
    the file system has none.

    Raises:
        OSError: they cannot be listed or read for another reason (permission, I/O).
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return ()
        raise
    pairs = []
    for name in sorted(names):
        try:
            pairs.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since it was listed: not there
                raise
    return tuple(pairs)


def owner_json(uid: int | None, gid: int | None) -> dict[str, int]:
    return {} if uid is None or gid is None else {"uid": uid, "gid": gid}


def xattrs_json(xattrs: Xattrs) -> dict[str, Any]:
    if not xattrs:
        return {}
    return {"xattrs": {name: base64.b64encode(value).decode() for name, value in xattrs}}


def parse_owner(raw: Mapping[str, Any], path: str) -> tuple[int | None, int | None]:
    if "uid" not in raw and "gid" not in raw:
        return None, None
    uid, gid = raw.get("uid"), raw.get("gid")
    for value in (uid, gid):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            raise ManifestError(f"{path!r}: uid and gid must be integers from 0 to 2**32 - 1")
    assert isinstance(uid, int) and isinstance(gid, int)
    return uid, gid


def parse_xattrs(raw: Mapping[str, Any], path: str) -> Xattrs:
    table = raw.get("xattrs", {})
    if not isinstance(table, dict):
        raise ManifestError(f"{path!r}: xattrs must be an object of name: base64 value")
    pairs = []
    for name, value in sorted(table.items()):
        if not isinstance(name, str) or not name or "\0" in name or not isinstance(value, str):
            raise ManifestError(f"{path!r}: bad extended attribute {name!r}")
        try:
            pairs.append((name, base64.b64decode(value, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise ManifestError(f"{path!r}: extended attribute {name!r} is not base64") from exc
    return tuple(pairs)


def apply_owner_and_xattrs(
    path: str, *, uid: int | None, gid: int | None, xattrs: Xattrs, as_root: bool
) -> list[str]:
    """Give ``path`` (never following a link) its recorded owner, if we are root, and its
    extended attributes; what could not be set, each as a message (a restore warns, and goes on:
    the bytes are what matter)."""
    problems = []
    if as_root and uid is not None and gid is not None:
        try:
            os.chown(path, uid, gid, follow_symlinks=False)
        except OSError as exc:
            problems.append(f"cannot give {path} to uid {uid} gid {gid}: {exc.strerror}")
    for name, value in xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as exc:
            problems.append(f"cannot set extended attribute {name} on {path}: {exc.strerror}")
    return problems


async def xattrs_of(path: str, *, wanted: bool) -> Xattrs:
    """``path``'s extended attributes if ``wanted`` (read in a worker thread); none otherwise,
    and none with a warning when they cannot be read."""
    if not wanted:
        return ()
    return await to_thread(xattrs_or_warn, path)


def xattrs_or_warn(path: str) -> Xattrs:
    """``path``'s extended attributes, or none with a warning when they cannot be read.
    Blocking: for worker threads."""
    try:
        return read_xattrs(path)
    except OSError as exc:
        log.warning(
            "cannot read the extended attributes of %s: %s; recorded without them",
            path,
            exc.strerror,
        )
        return ()
