"""A backup job's state, shared by the parts of ``BackupJob`` (backup.py): what it has read,
what the store holds, what it uploaded, and which entries it takes.

The parts: ``backup_stored.py`` decides which chunks are stored already; ``backup_files.py``
reads files and uploads their chunks; ``backup.py`` runs the job and commits it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime

from asyncbackup.backup_options import BackupOptions
from asyncbackup.batching import ThreadBatch
from asyncbackup.budget import ByteBudget
from asyncbackup.config import EngineConfig
from asyncbackup.freeing import drain
from asyncbackup.links import HardLinks
from asyncbackup.locks import SHARED, RepositoryLock
from asyncbackup.manifest import FileEntry, SourceWarning
from asyncbackup.metrics import Metrics
from asyncbackup.packer import Packer
from asyncbackup.packs import PackIndex
from asyncbackup.parent import Parent
from asyncbackup.progress import Progress
from asyncbackup.repository import Repository
from asyncbackup.walk import SourceEntry

OPERATION = "backup"
Clock = Callable[[], datetime]
"""The time now, as an aware UTC datetime: a backup's started and finished times."""


def utc_clock() -> datetime:
    return datetime.now(UTC)


class BackupState:
    """What a backup job knows while it runs; ``BackupJob`` is built on it."""

    packs = True
    """Whether this job packs small chunks, and writes an INDEX for them (see ``packer.py``).
    A job that sets it False names no chunk that lies in a pack, only chunk objects. (A shard
    packs too: its record carries its INDEX part, ``shard_records.py``.)"""

    def __init__(
        self,
        repo: Repository,
        config: EngineConfig,
        metrics: Metrics,
        progress: Progress,
        *,
        clock: Clock = utc_clock,
        options: BackupOptions | None = None,
        lock: RepositoryLock | None = None,
        host: str | None = None,
    ) -> None:
        self.repo = repo
        # What the MANIFEST records, and whose backups the parent is chosen from: this host,
        # unless the job is one shard of a backup many hosts make (``shards.py``).
        self.host = host if host is not None else socket.gethostname()
        self.parent: Parent | None = None
        self.lock = (
            lock if lock is not None else RepositoryLock(repo, kind=SHARED, operation=OPERATION)
        )
        self.config = config
        self.metrics = metrics
        self.progress = progress
        self.clock = clock
        self.options = options if options is not None else BackupOptions()
        self.warnings: list[SourceWarning] = []
        self.links = HardLinks()
        # Entries hold raw digests while the job runs; the MANIFEST names each chunk's ref.
        self.entries: list[FileEntry] = []
        # Entries final as they are: directories, links, and files unchanged since the parent
        # (their chunks are the parent's refs), taken whole by the walk's worker thread.
        self.ready: list[FileEntry] = []
        # The refs an unchanged file may name: None, the parent's (trusted); else what a
        # listing found, after the parent failed its spot check.
        self.trusted: set[str] | None = None
        # digest -> ref confirmed in the store: listed (under any codec), or uploaded by this job
        self.stored: dict[str, str] = {}
        self.scheduled: set[str] = set()  # stored, or on its way
        # ref -> place of each chunk known to lie in a pack: trusted INDEX entries, and the
        # packs this job stored; the new INDEX is this, for the refs the MANIFEST names
        self.places = PackIndex()
        self.packer: Packer | None = None
        self.skipped = 0
        self.unchanged = 0
        self.bytes_read = 0
        self.uploaded = 0
        self._reads = ThreadBatch()  # small files' reads share worker-thread trips
        self.buffers = ByteBudget(config.buffer_budget)
        self.bytes_uploaded = 0

    async def release(self, entries: list[FileEntry]) -> None:
        """Free what the job holds once it is done, a part at a time (``freeing.drain``):
        ``entries`` (the committed MANIFEST's, this the last reference to each), what the
        store holds and where, and the parent. Dropped at once as the job returned, 100,000
        entries and as many refs and places were one C call of tens of ms, the GIL held and
        the event loop waiting."""
        parent, self.parent = self.parent, None
        await drain(entries, self.stored, self.scheduled, self.places.places)
        if self.trusted is not None:
            await drain(self.trusted)
        if parent is not None:
            await parent.release()

    def _takes(self, entry: SourceEntry) -> bool:
        """Whether this job backs up ``entry``: every one, unless it is one shard of a backup
        split across processes (``shards.py`` takes only its own paths)."""
        return True
