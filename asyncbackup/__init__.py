"""asyncbackup: an asyncio backup engine for directories, to S3, GCS or a local directory.

async with open_storage("file:///var/backups/app") as store:
    summary = await BackupEngine(store).backup("/srv/app", name="nightly-1")
"""

from asyncbackup.backup import BackupSummary
from asyncbackup.backup_options import BackupOptions
from asyncbackup.bandwidth import Bandwidth
from asyncbackup.compression import Compression
from asyncbackup.config import EngineConfig, RetryPolicy
from asyncbackup.diff import BackupDiff, Change
from asyncbackup.engine import BackupEngine, BackupInfo, VerifyReport
from asyncbackup.errors import (
    BackupError,
    BackupFailed,
    ConfigError,
    FailedItem,
    IntegrityError,
    ManifestError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    SourceChangedError,
    SourceError,
    SourceVanishedError,
    StorageError,
    TargetError,
    TransientStorageError,
)
from asyncbackup.manifest import FileEntry, Manifest, SourceWarning
from asyncbackup.metrics import Metrics
from asyncbackup.progress import Progress
from asyncbackup.prune import PruneReport
from asyncbackup.restore import RestoreSummary
from asyncbackup.retention import Decision, RetentionPolicy
from asyncbackup.storage import (
    FaultyStorage,
    LocalStorage,
    MemoryStorage,
    Storage,
    StoreOptions,
    open_storage,
)

__all__ = [
    "BackupDiff",
    "BackupEngine",
    "BackupError",
    "BackupFailed",
    "BackupInfo",
    "BackupOptions",
    "BackupSummary",
    "Bandwidth",
    "Change",
    "Compression",
    "ConfigError",
    "Decision",
    "EngineConfig",
    "FailedItem",
    "FaultyStorage",
    "FileEntry",
    "IntegrityError",
    "LocalStorage",
    "Manifest",
    "ManifestError",
    "MemoryStorage",
    "Metrics",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "PermanentStorageError",
    "Progress",
    "PruneReport",
    "RestoreSummary",
    "RetentionPolicy",
    "RetryPolicy",
    "SourceChangedError",
    "SourceError",
    "SourceVanishedError",
    "SourceWarning",
    "Storage",
    "StorageError",
    "StoreOptions",
    "TargetError",
    "TransientStorageError",
    "VerifyReport",
    "open_storage",
]
