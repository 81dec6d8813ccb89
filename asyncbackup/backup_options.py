"""What one backup takes from its source, and how strictly: options of a single backup job."""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncbackup.excludes import ExcludeOptions


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
    """

    strict: bool = False
    xattrs: bool = False  # record extended attributes (a listing per entry: off by default)
    excludes: ExcludeOptions = field(default_factory=ExcludeOptions)
