"""asyncbackup: an asyncio backup engine for directories, to S3, GCS or a local directory.

async with open_storage("file:///var/backups/app") as store:
    summary = await BackupEngine(store).backup("/srv/app", name="nightly-1")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncbackup.backup import BackupSummary
    from asyncbackup.backup_options import BackupOptions, ChangeDetection
    from asyncbackup.bandwidth import Bandwidth
    from asyncbackup.compression import Compression
    from asyncbackup.config import EngineConfig, RetryPolicy
    from asyncbackup.diff import BackupDiff, Change
    from asyncbackup.engine import BackupEngine, BackupInfo, Filters, VerifyReport
    from asyncbackup.errors import (
        BackupError,
        BackupFailed,
        ConfigError,
        FailedItem,
        IntegrityError,
        ManifestError,
        ManifestTooLarge,
        NameTakenError,
        ObjectExistsError,
        ObjectNotFoundError,
        PermanentStorageError,
        SourceAccessError,
        SourceChangedError,
        SourceError,
        SourceVanishedError,
        StorageError,
        TargetError,
        TransientStorageError,
    )
    from asyncbackup.manifest import FileEntry, Manifest, SourceWarning
    from asyncbackup.metrics import Metrics
    from asyncbackup.packuse import RepackPolicy
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

_HOMES = {
    "BackupDiff": "asyncbackup.diff",
    "BackupEngine": "asyncbackup.engine",
    "BackupError": "asyncbackup.errors",
    "BackupFailed": "asyncbackup.errors",
    "BackupInfo": "asyncbackup.engine",
    "BackupOptions": "asyncbackup.backup_options",
    "BackupSummary": "asyncbackup.backup",
    "Bandwidth": "asyncbackup.bandwidth",
    "Change": "asyncbackup.diff",
    "ChangeDetection": "asyncbackup.backup_options",
    "Compression": "asyncbackup.compression",
    "ConfigError": "asyncbackup.errors",
    "Decision": "asyncbackup.retention",
    "EngineConfig": "asyncbackup.config",
    "FailedItem": "asyncbackup.errors",
    "FaultyStorage": "asyncbackup.storage",
    "FileEntry": "asyncbackup.manifest",
    "Filters": "asyncbackup.engine",
    "IntegrityError": "asyncbackup.errors",
    "LocalStorage": "asyncbackup.storage",
    "Manifest": "asyncbackup.manifest",
    "ManifestError": "asyncbackup.errors",
    "ManifestTooLarge": "asyncbackup.errors",
    "MemoryStorage": "asyncbackup.storage",
    "Metrics": "asyncbackup.metrics",
    "NameTakenError": "asyncbackup.errors",
    "ObjectExistsError": "asyncbackup.errors",
    "ObjectNotFoundError": "asyncbackup.errors",
    "PermanentStorageError": "asyncbackup.errors",
    "Progress": "asyncbackup.progress",
    "PruneReport": "asyncbackup.prune",
    "RepackPolicy": "asyncbackup.packuse",
    "RestoreSummary": "asyncbackup.restore",
    "RetentionPolicy": "asyncbackup.retention",
    "RetryPolicy": "asyncbackup.config",
    "SourceAccessError": "asyncbackup.errors",
    "SourceChangedError": "asyncbackup.errors",
    "SourceError": "asyncbackup.errors",
    "SourceVanishedError": "asyncbackup.errors",
    "SourceWarning": "asyncbackup.manifest",
    "Storage": "asyncbackup.storage",
    "StorageError": "asyncbackup.errors",
    "StoreOptions": "asyncbackup.storage",
    "TargetError": "asyncbackup.errors",
    "TransientStorageError": "asyncbackup.errors",
    "VerifyReport": "asyncbackup.engine",
    "open_storage": "asyncbackup.storage",
}
"""Where each export lives. They load on first use (``__getattr__``), so that ``asyncbackup
--help`` and a command on a local store pay neither for the SDKs nor for the metrics
(docs/benchmarks.md, start-up); tests/test_startup.py checks this table against ``__all__``."""

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
    "ChangeDetection",
    "Compression",
    "ConfigError",
    "Decision",
    "EngineConfig",
    "FailedItem",
    "FaultyStorage",
    "FileEntry",
    "Filters",
    "IntegrityError",
    "LocalStorage",
    "Manifest",
    "ManifestError",
    "ManifestTooLarge",
    "MemoryStorage",
    "Metrics",
    "NameTakenError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "PermanentStorageError",
    "Progress",
    "PruneReport",
    "RepackPolicy",
    "RestoreSummary",
    "RetentionPolicy",
    "RetryPolicy",
    "SourceAccessError",
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'asyncbackup' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
