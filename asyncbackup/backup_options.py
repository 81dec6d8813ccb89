"""What one backup takes from its source, and how strictly: options of a single backup job."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from asyncbackup.errors import ConfigError
from asyncbackup.excludes import ExcludeOptions
from asyncbackup.layout import check_backup_name


@dataclass(frozen=True, kw_only=True)
class ChangeDetection:
    """How a backup tells a file unchanged since its parent from a changed one (restic's
    options; see ``asyncbackup/parent.py``)."""

    force: bool = False
    """Read every file, and trust no parent: what is stored is learnt from a listing."""
    ignore_inode: bool = False
    ignore_ctime: bool = False


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

    ``tags``: recorded in the MANIFEST; ``list --tag`` finds them, ``show`` prints them, and
    ``prune --tag`` selects backups by them. ``parent``: the backup whose unchanged files are
    not read (default: the newest backup of the same host and source); ``changes``: what makes
    a file changed.

    Raises:
        ConfigError: a tag is invalid (``check_tag``), or ``parent`` is not a backup name.
    """

    strict: bool = False
    xattrs: bool = False  # record extended attributes (a listing per entry: off by default)
    excludes: ExcludeOptions = field(default_factory=ExcludeOptions)
    tags: tuple[str, ...] = ()
    parent: str | None = None
    changes: ChangeDetection = field(default_factory=ChangeDetection)

    def __post_init__(self) -> None:
        if isinstance(self.tags, str):
            raise ConfigError(f"tags must be a sequence of tags, not the string {self.tags!r}")
        for tag in self.tags:
            check_tag(tag)
        if self.parent is not None:
            check_backup_name(self.parent)
