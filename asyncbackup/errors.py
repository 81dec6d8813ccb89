"""The errors asyncbackup raises. Every one is a ``BackupError``::

    BackupError
    ├── ConfigError                 bad URL or option, backup name taken, target not empty
    ├── SourceError                 unreadable input, a file that vanished or changed while read
    │   ├── SourceChangedError      a file that kept changing while it was read
    │   ├── SourceVanishedError     a file that was gone by the time it was read
    │   └── SourceAccessError       a file or directory the backup may not read
    ├── TargetError                 the restore target cannot be written (disk full...)
    ├── ManifestError               missing, corrupt or unsafe MANIFEST
    │   └── ManifestTooLarge        a MANIFEST over the size limit: not read
    ├── NameTakenError              another job committed a backup of this name first
    ├── IntegrityError              a chunk or file whose hash or size does not match
    ├── LockError                   the repository lock could not be taken, or was lost
    ├── StorageError
    │   ├── TransientStorageError   timeouts, resets, 408, 429, 5xx, SlowDown: retried
    │   └── PermanentStorageError   401, 403, NoSuchBucket, 400: never retried
    │       ├── ObjectNotFoundError a key that must exist does not
    │       └── ObjectExistsError   a create-only write found the key taken
    └── BackupFailed                a job gave up; carries each failed file and its last error

Backends turn their SDK's exceptions into these at their boundary (``raise ... from exc``), so the
engine never sees aiobotocore or aiohttp. Messages say what happened, to which file or key, and what
to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class BackupError(Exception):
    """The root of every error asyncbackup raises."""


class ConfigError(BackupError):
    """A bad option, URL or argument: nothing was attempted."""


class SourceError(BackupError):
    """Input that cannot be read, or that vanished or changed while it was read."""


class SourceChangedError(SourceError):
    """A file whose size or mtime changed while it was read: its bytes and hash may not match."""


class SourceVanishedError(SourceError):
    """A file listed by the walk that was gone when it was opened (a log rotated, a temp file)."""


class SourceAccessError(SourceError):
    """Permission to read a file or list a directory was denied: a rerun will not help."""


class TargetError(BackupError):
    """The restore target cannot be written: permissions, a full disk, a file in the way."""


class NameTakenError(BackupError):
    """Another job committed a backup of the same name while this one ran (a lost race, not
    bad usage: the CLI exits 1). Nothing of this job was committed; its chunks are reused by
    a run under another name."""


class ManifestError(BackupError):
    """A MANIFEST that is missing, corrupt, or names a path outside the restore target."""


class ManifestTooLarge(ManifestError):
    """A MANIFEST larger than the limit set for reading one: refused before it is read whole."""


class IntegrityError(BackupError):
    """Stored bytes whose hash or size differs from what the manifest promises."""


class LockError(BackupError):
    """The repository lock could not be taken within ``--lock-wait``, or a job could no longer
    trust its own lock: the job stopped before its next destructive or committing step."""


class StorageError(BackupError):
    """A store operation failed."""


class TransientStorageError(StorageError):
    """A failure that may pass: a timeout, a reset, a throttle, a 5xx. Retried with backoff."""


class PermanentStorageError(StorageError):
    """A failure that a retry cannot fix: credentials, a missing bucket, a bad request."""


class ObjectNotFoundError(PermanentStorageError):
    """A key that must exist is missing from the store."""


class ObjectExistsError(PermanentStorageError):
    """A create-only write found its key already taken."""


@dataclass(frozen=True)
class FailedItem:
    """One file (or store key) a job could not process, and why."""

    path: str
    error: BackupError


class BackupFailed(BackupError):
    """A job gave up. ``failures`` names each failed file and its error; ``outcome`` says what
    became of the commit: nothing, except when the MANIFEST write itself was not confirmed."""

    def __init__(
        self,
        operation: str,
        failures: Sequence[FailedItem],
        *,
        hint: str = "",
        outcome: str = "nothing was committed",
    ) -> None:
        self.operation = operation
        self.failures = tuple(failures)
        shown = "; ".join(
            f"{f.path}: {f.error}" if f.path else str(f.error) for f in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        message = f"{operation} failed, {outcome}: {shown}{more}"
        # A rerun cannot fix what the store refuses (credentials, a missing bucket or chunk) nor
        # a source it may not read: the hint to run again is left out, and each message says
        # what to fix instead.
        refused = all(
            isinstance(f.error, PermanentStorageError | SourceAccessError) for f in self.failures
        )
        super().__init__(f"{message}. {hint}" if hint and not refused else message)
