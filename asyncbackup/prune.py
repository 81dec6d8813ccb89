"""Prune: remove the backups a retention policy lets go, then the chunks no backup needs.

Mark and sweep, in this order:

1. Note the time the prune began (``began``), by this machine's clock.
2. Read every MANIFEST. If one cannot be read, stop here, having deleted nothing: the chunks of a
   backup we cannot read would look unused, and sweeping them would destroy it.
3. Decide (``retention.decide``) and remove the MANIFESTs of the backups let go.
4. Mark every chunk ref the kept backups name; list ``chunks/`` with each object's time.
5. Sweep: an unmarked chunk is removed only if it was last written before ``began - grace``.
   A chunk written after the prune began, or within the grace period before it, stays: it may
   belong to a backup that is running and has not committed its MANIFEST yet. The temporary
   files of writes a crash cut short (local store) are removed by the same rule.
6. Before each batch of deletes, list the MANIFESTs again: a backup committed since step 2 is
   read, and the chunks it names are taken out of the sweep.

The race the grace period does not cover: a backup that starts before a prune lists the chunks
and finds an *old* chunk already stored, so it does not upload it. That chunk may be unmarked
(its backups were let go), so this prune may remove it before the backup commits. The backup's
side of the contract closes that: just before it commits, it lists the chunks again and uploads
once more, read from its source and checked against its hash, every chunk it needs that is gone
(``BackupJob._recheck``).

What remains, stated plainly: a window between the backup's re-check listing and its MANIFEST
write (one sync and one put), against a prune whose last listing of MANIFESTs (step 6) came
before that write and whose delete of one of those chunks comes after the re-check. Both spans
are short (a batch of ``DELETE_BATCH`` deletes, and a commit), and step 7 catches the outcome:

7. After the sweep, list the MANIFESTs once more; a backup committed meanwhile that names a chunk
   this prune removed is reported (``IntegrityError``, exit 1), naming the backup, so nothing is
   lost silently: ``verify`` shows it, and the next backup of the same data uploads the chunk
   again (it is missing from the listing), which repairs the damaged backup too.

Object times come from the store's clock (S3's LastModified, GCS's ``updated``, the file's
mtime), ``began`` from this machine's: the grace period must exceed any skew between the two,
which the default of 24 hours does by far. ``--grace 0`` is for tests and quiet stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from asyncbackup.config import EngineConfig
from asyncbackup.defaults import DEFAULT_GRACE as DEFAULT_GRACE  # re-exported
from asyncbackup.errors import IntegrityError, ManifestError
from asyncbackup.layout import CHUNKS, chunk_key, manifest_key, ref_of_chunk_key
from asyncbackup.manifest import Manifest
from asyncbackup.pool import TaskPool
from asyncbackup.repository import Repository
from asyncbackup.retention import Decision, RetentionPolicy, decide
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
OPERATION = "prune"
DELETE_BATCH = 1000
"""Chunks deleted between two listings of the MANIFESTs (step 6)."""


@dataclass(frozen=True)
class PruneReport:
    """What a prune kept, removed and freed (or, with ``dry_run``, would have)."""

    dry_run: bool
    grace: float
    decisions: list[Decision]
    chunks_deleted: int = 0
    bytes_freed: int = 0
    chunks_in_use: int = 0  # named by a kept backup (or one committed while the prune ran)
    chunks_young: int = 0  # unused, but written within the grace period or since the prune began
    bytes_young: int = 0
    late_backups: list[str] = field(default_factory=list)  # committed while the prune ran
    leftovers: int = 0  # temporary files of writes a crash cut short (local store)

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.kept]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.kept]

    def decision_lines(self) -> list[str]:
        """One line per backup, newest first: kept (and by which rules), or removed."""
        lines = []
        for d in self.decisions:
            when = d.finished.isoformat(timespec="seconds")
            if d.kept:
                lines.append(f"keep {d.name} {when} ({', '.join(d.reasons)})")
            else:
                lines.append(f"{'would remove' if self.dry_run else 'remove'} {d.name} {when}")
        return lines

    def summary(self) -> str:
        """What was kept, removed and freed, in one line."""
        kept = _count(len(self.kept), "backup")
        removed = len(self.removed)
        chunks = (
            f"{_count(self.chunks_deleted, 'unused chunk')} ({self.bytes_freed / 2**20:.1f} MiB)"
        )
        if self.dry_run:
            head = (
                f"prune (dry run, nothing deleted): would keep {kept} and remove {removed}; "
                f"would delete {chunks}"
            )
        else:
            head = f"prune: kept {kept}, removed {removed}; deleted {chunks}"
        tail = f"; {self.chunks_in_use} chunks in use"
        if self.chunks_young:
            tail += (
                f"; {self.chunks_young} unused chunks ({self.bytes_young / 2**20:.1f} MiB) are "
                f"younger than the grace period ({self.grace:g} s) and stay"
            )
        if self.late_backups:
            tail += f"; committed while it ran: {', '.join(self.late_backups)}"
        if self.leftovers:
            verb = "would remove" if self.dry_run else "removed"
            tail += (
                f"; {verb} {_count(self.leftovers, 'temporary file')} left by interrupted writes"
            )
        return head + tail


class PruneJob:
    """One prune of one store; see the module docstring for the order of its steps."""

    def __init__(
        self,
        repo: Repository,
        config: EngineConfig,
        *,
        policy: RetentionPolicy,
        grace: float,
        dry_run: bool,
        clock: Callable[[], datetime],
    ) -> None:
        self.repo = repo
        self.config = config
        self.policy = policy
        self.grace = grace
        self.dry_run = dry_run
        self.clock = clock
        self.seen: set[str] = set()  # backups whose MANIFESTs were read, kept or let go
        self.late: list[str] = []
        # One str per ref, shared by every backup that names it: 30 backups of 100,000 chunks
        # then cost 30 sets of pointers, not 3 million strings.
        self._interned: dict[str, str] = {}

    async def run(self) -> PruneReport:
        """Prune the store.

        Raises:
            ManifestError: a MANIFEST cannot be read or has no valid time; nothing was deleted.
            IntegrityError: a backup committed during the prune names a chunk it removed.
            BackupFailed: the store failed (what was deleted so far stays deleted: harmless).
        """
        began = self.clock().timestamp()
        names = await self.repo.backup_names()
        backups = await self._read_all(names)
        self.seen.update(names)
        decisions = decide([(n, b.finished) for n, b in backups.items()], self.policy)
        kept = {d.name for d in decisions if d.kept}
        removed = [d.name for d in decisions if not d.kept]
        if not self.dry_run:
            await self._delete_all([manifest_key(n) for n in removed], label="backup")
        marked = await to_thread(_union, [backups[n].refs for n in kept])
        del backups

        cutoff = began - self.grace
        sweep: dict[str, int] = {}  # ref -> size: only the candidates are held, page by page
        in_use = young = bytes_young = 0
        async for page in self.repo.object_pages(CHUNKS):
            for obj in page:
                ref = ref_of_chunk_key(obj.key)
                if ref is None:
                    continue  # not a chunk: never ours to remove
                if ref in marked:
                    in_use += 1
                elif obj.modified >= cutoff:
                    young += 1
                    bytes_young += obj.size
                else:
                    sweep[ref] = obj.size
        del marked

        deleted: dict[str, int] = {}
        protected: set[str] = set()
        refs = sorted(sweep)
        for start in range(0, len(refs), DELETE_BATCH):
            protected |= await self._committed_since()
            batch = [r for r in refs[start : start + DELETE_BATCH] if r not in protected]
            if not self.dry_run:
                await self._delete_all([chunk_key(r) for r in batch], label="chunk")
            deleted.update((r, sweep[r]) for r in batch)
        in_use += len(sweep.keys() - deleted.keys())  # spared: a late backup names them
        leftovers = await self.repo.store.remove_leftovers(cutoff, dry_run=self.dry_run)
        if not self.dry_run:
            await self._check_late_backups(set(deleted))
        return PruneReport(
            dry_run=self.dry_run,
            grace=self.grace,
            decisions=decisions,
            chunks_deleted=len(deleted),
            bytes_freed=sum(deleted.values()),
            chunks_in_use=in_use,
            chunks_young=young,
            bytes_young=bytes_young,
            late_backups=list(self.late),
            leftovers=leftovers,
        )

    async def _read_all(
        self, names: Iterable[str], *, stopped: str = "prune stopped and deleted nothing"
    ) -> dict[str, _Backup]:
        """What prune needs of each backup; each MANIFEST is let go as soon as it is read (one
        of 100,000 files holds about 50 MiB once parsed).

        Raises:
            ManifestError: a MANIFEST cannot be read or has no valid time (``stopped`` says
                how far the prune got).
        """
        backups: dict[str, _Backup] = {}
        broken: dict[str, str] = {}

        async def read(name: str) -> None:
            try:
                manifest = await self.repo.load_manifest(name)
                finished = _finished(manifest)
            except ManifestError as exc:
                broken[name] = str(exc)
                return
            refs = await to_thread(self._refs_of, manifest)
            backups[name] = _Backup(finished, refs)

        async with TaskPool(OPERATION, limit=self.config.concurrency) as pool:
            for name in names:
                await pool.spawn(name, partial(read, name))
        if broken:
            first = sorted(broken)[0]
            more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
            raise ManifestError(
                f"{stopped}: the MANIFEST of backup {first!r} "
                f"cannot be read ({broken[first]}){more}. The chunks of a backup that cannot be "
                "read would look unused, and removing them could destroy it. Repair it, or "
                f"remove it with 'asyncbackup delete STORE {first}' if it is beyond repair, "
                "then run prune again"
            )
        return backups

    def _refs_of(self, manifest: Manifest) -> frozenset[str]:
        intern = self._interned.setdefault  # atomic under the GIL: threads may share it
        return frozenset(intern(ref, ref) for entry in manifest.entries for ref in entry.chunks)

    async def _committed_since(self) -> set[str]:
        """The refs named by backups committed since the prune read the MANIFESTs (step 6).

        Raises:
            ManifestError: such a backup's MANIFEST cannot be read.
        """
        names = [n for n in await self.repo.backup_names() if n not in self.seen]
        if not names:
            return set()
        backups = await self._read_all(names, stopped="prune stopped sweeping")
        self.seen.update(names)
        self.late.extend(names)
        log.info("prune: %d backups committed meanwhile; their chunks stay", len(names))
        return await to_thread(_union, [b.refs for b in backups.values()])

    async def _check_late_backups(self, deleted: set[str]) -> None:
        names = [n for n in await self.repo.backup_names() if n not in self.seen]
        if not names:
            return
        backups = await self._read_all(names, stopped="prune swept, then stopped")
        self.late.extend(names)
        for name, backup in sorted(backups.items()):
            lost = backup.refs & deleted
            if lost:
                raise IntegrityError(
                    f"backup {name!r} was committed while prune removed "
                    f"{len(lost)} chunks it needs (such as {sorted(lost)[0]}); "
                    f"'asyncbackup verify STORE {name}' shows which files are "
                    "affected, and the next backup of the same source uploads them again"
                )

    async def _delete_all(self, keys: list[str], *, label: str) -> None:
        async with TaskPool(OPERATION, limit=self.config.concurrency) as pool:
            for key in keys:
                await pool.spawn(key, partial(self.repo.delete_object, key))
        if keys:
            log.debug("prune: deleted %d %ss", len(keys), label)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class _Backup:
    """What prune keeps of a MANIFEST: when the backup finished, and the chunks it names."""

    finished: datetime
    refs: frozenset[str]


def _union(sets: list[frozenset[str]]) -> set[str]:
    return set().union(*sets)


def _finished(manifest: Manifest) -> datetime:
    """When the backup finished, as an aware UTC time.

    Raises:
        ManifestError: the time is not ISO 8601.
    """
    try:
        finished = datetime.fromisoformat(manifest.finished)
    except ValueError:
        raise ManifestError(
            f"backup {manifest.name!r}: its finished time {manifest.finished!r} is not ISO 8601"
        ) from None
    if finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)
    return finished.astimezone(UTC)


__all__ = ["DEFAULT_GRACE", "PruneJob", "PruneReport"]
