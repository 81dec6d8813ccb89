"""What one backup takes from its source, and how strictly: options of a single backup job."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from asyncbackup.errors import ConfigError
from asyncbackup.excludes import ExcludeOptions

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:=@/-]{0,99}")


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag.

    Raises:
        ConfigError: it is empty, longer than 100 characters, or has characters other than
            letters, digits and ``._+:=@/-`` (a comma joins tags in ``prune --tag a,b``).
    """
    if not _TAG.fullmatch(tag):
        raise ConfigError(
            f"invalid tag {tag!r}: use 1 to 100 letters, digits, '.', '_', '+', ':', '=', '@', "
            "'/' or '-', starting with a letter or digit"
        )
    return tag


@dataclass(frozen=True, kw_only=True)
class BackupOptions:
    """Options of one backup (``BackupEngine.backup(..., options=...)``).

    ``strict``: all or nothing, as before issue 17. Without it (the default), a file that
    vanished or cannot be read is skipped with a warning, and a file that kept changing through
    every read is stored as last read, with a warning; the backup commits, records each warning
    in its MANIFEST, and the command line exits 3. With it, any of those fails the backup and
    nothing is committed.

    ``excludes``: what to leave out (patterns, caches, marked directories, other file systems);
    a local store inside the source is always left out, with a log line.

    ``tags``: recorded in the MANIFEST; ``list`` and ``show`` print them, and ``prune --tag``
    selects backups by them.

    Raises:
        ConfigError: a tag is invalid (``check_tag``).
    """

    strict: bool = False
    xattrs: bool = False  # record extended attributes (a listing per entry: off by default)
    excludes: ExcludeOptions = field(default_factory=ExcludeOptions)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for tag in self.tags:
            check_tag(tag)
