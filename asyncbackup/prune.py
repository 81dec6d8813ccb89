"""Prune: remove the backups a retention policy lets go, then the chunks no backup needs.

Mark and sweep, under the repository's exclusive lock (``locks.py``):

1. Take the exclusive lock (a dry run takes none: it deletes nothing). Note the time (``began``).
   List ``backups/``: the backups, their source marks, and the INDEXes whose MANIFEST is gone
   (older than the grace).
2. Read every MANIFEST. If one cannot be read, stop here, having deleted nothing: the chunks of a
   backup we cannot read would look unused, and sweeping them would destroy it.
3. Decide (``retention.decide``). Read the INDEX of every backup that stays and packs chunks
   (``packuse.LivePacks``); if one cannot be read, stop, having deleted nothing. Check the lock;
   remove the MANIFESTs of the backups let go, then their INDEXes (a MANIFEST never lacks its
   INDEX), then their source marks and any mark whose MANIFEST is gone (a mark without a
   MANIFEST is passed over by the parent search; the reverse would cost a head read: the
   order is argued in docs/design.md, "Source marks and prune").
4. Mark every chunk ref the remaining backups name as an object (a packed ref is read from its
   pack, not from ``chunks/``); list ``chunks/`` with each object's time.
5. Sweep: an unmarked chunk written before ``began - grace`` is removed, in batches of
   ``DELETE_BATCH``; the lock is checked (read back) before each batch, and its guard passes
   before every single delete attempt.
6. Packs (``packuse.py`` plans, ``repack.py`` acts): delete the packs no remaining INDEX names
   (older than the grace period); repack those past ``--max-unused`` (live chunks copied into
   new packs, every INDEX naming them rewritten, then the old packs deleted, last). Remove the
   INDEXes of no backup, and the temporary files of writes a crash cut short (local store), by
   the same grace rule.
7. Release the lock.

The reads of steps 1 to 3 are in ``prune_reading.py``; the steps' order and every delete are here.

**Invariant.** No chunk named by a committed MANIFEST, or seen in ``chunks/`` by a backup that
has not committed yet, is removed while that backup could still commit.

*Proof sketch.* A backup holds a shared lock from before its first read of the store (the
``chunks/`` listing) until after its MANIFEST is written; prune deletes only while it holds the
exclusive lock and trusts it (every delete attempt passes ``guard``). (a) Mutual exclusion: of a
backup and a prune that each wrote their lock and then listed ``locks/``, the later writer's
listing sees the other's lock (strong list-after-write consistency: S3, GCS, local file system),
so at most one of them proceeds; a waiter retries until the holder's lock is gone. (b) So every
delete of a prune happens either before the backup's lock was written, and then the backup's
listing, which comes after, no longer shows the chunk (it uploads it), or after the backup's lock
was removed, which the backup does only after its commit (or after giving up): then the chunk is
named by a committed MANIFEST, which prune read in step 2 under the same lock, so it is marked and
stays. (c) MANIFESTs committed before prune took its lock are all read in step 2, since no backup
commits while prune holds the lock. (d) Staleness is the one way a lock is overridden: a job
trusts its lock only while it refreshed it within half the stale period, and stops (no delete, no
commit) as soon as it cannot (``locks.py`` states the clock and pause assumptions: skew and
pauses well below a quarter of the stale period, 7.5 minutes by default).

**Packs.** The same lock makes step 6 safe beside backups; what makes it safe at every instant
of its own, crash included, is its order: *every place that the INDEX of a committed backup
names lies in a pack that exists and holds that chunk there*, because new packs are durable
before an INDEX names them, each INDEX is replaced atomically, and an old pack is deleted only
after no INDEX names it any more. The proof sketch is in ``repack.py``'s docstring and in
docs/design.md, "Prune of packs".

So the old after-the-fact checks are gone: the backup no longer lists ``chunks/`` again before
its commit, and prune no longer re-reads the MANIFESTs between batches or after its sweep.

**The grace period** is no longer part of the safety argument. It stays (default 24 hours) for
two reasons: a backup re-run after a crash reuses the chunks the crashed run uploaded (named by
no MANIFEST, so a prune in between would remove them and the re-run would upload them again);
and writers that take no lock (asyncbackup before version 3 of the format, a backup run with the
protocol switched off) still get the old protection for chunks they wrote within it. Object times
come from the store's clock, ``began`` from this machine's: the grace period must exceed the skew
between the two. ``--grace 0`` is safe beside locked backups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import partial

from asyncbackup.config import EngineConfig
from asyncbackup.defaults import DEFAULT_GRACE as DEFAULT_GRACE  # re-exported
from asyncbackup.layout import (
    CHUNKS,
    chunk_key,
    index_key,
    manifest_key,
    pack_key,
    ref_of_chunk_key,
)
from asyncbackup.locks import EXCLUSIVE, RepositoryLock
from asyncbackup.packuse import DEFAULT_PACK_SIZE, RepackPolicy, plan_packs
from asyncbackup.pool import TaskPool
from asyncbackup.prune_reading import OPERATION, PruneReading
from asyncbackup.prune_report import PruneReport
from asyncbackup.repack import Repacker
from asyncbackup.repository import Repository
from asyncbackup.retention import RetentionPolicy, decide
from asyncbackup.shard_records import refs_of_shard_records
from asyncbackup.threads import to_thread

log = logging.getLogger("asyncbackup")
DELETE_BATCH = 1000
"""Chunks deleted between two checks of the lock (step 5)."""


class PruneJob(PruneReading):
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
        lock: RepositoryLock | None = None,
        repack: RepackPolicy | None = None,
    ) -> None:
        self.repo = repo
        repack = repack if repack is not None else RepackPolicy()
        if repack.pack_size is None:  # new packs as large as the engine's backups make them
            repack = replace(repack, pack_size=getattr(config, "pack_size", DEFAULT_PACK_SIZE))
        self.repack = repack
        self.config = config
        self.policy = policy
        self.grace = grace
        self.dry_run = dry_run
        self.clock = clock
        self.lock = (
            lock if lock is not None else RepositoryLock(repo, kind=EXCLUSIVE, operation=OPERATION)
        )
        # One str per ref, shared by every backup that names it: 30 backups of 100,000 chunks
        # then cost 30 sets of pointers, not 3 million strings.
        self._interned: dict[str, str] = {}

    @property
    def pack_size(self) -> int:
        assert self.repack.pack_size is not None  # set in __init__
        return self.repack.pack_size

    async def run(self) -> PruneReport:
        """Prune the store.

        Raises:
            ManifestError: a MANIFEST cannot be read or has no valid time; nothing was deleted.
            LockError: the exclusive lock could not be taken within ``--lock-wait`` (nothing
                was deleted), or was lost (nothing more was deleted).
            BackupFailed: the store failed (what was deleted so far stays deleted: harmless).
        """
        if self.dry_run:  # deletes nothing, so it needs no lock and waits for no backup
            return await self._locked_run()
        async with self.lock:
            return await self._locked_run()

    async def _locked_run(self) -> PruneReport:
        began = self.clock().timestamp()
        cutoff = began - self.grace
        names, orphans, marks = await self._list_backups(cutoff)
        backups = await self._read_all(names)
        decisions = decide([b.candidate for b in backups.values()], self.policy)
        removed = {d.name for d in decisions if not d.kept}
        # Everything not removed stays: the kept backups, and those the policy's filters
        # (--host, --source, --tag) did not select, which it leaves alone.
        staying = {n: b for n, b in backups.items() if n not in removed}
        live = await self._read_indexes(staying)  # before any delete: it may stop the prune
        if not self.dry_run and removed:
            await self.lock.check()
            await self._delete_all([manifest_key(n) for n in sorted(removed)], label="backup")
            # After the MANIFESTs: a MANIFEST never lacks its INDEX.
            packed = sorted(n for n in removed if backups[n].packed)
            await self._delete_all([index_key(n) for n in packed], label="INDEX")
        # Marks last (docs/design.md, "Source marks and prune"): those of the backups let go,
        # and those whose MANIFEST was already gone (a prune or delete killed in between).
        stray = sorted(k for n, keys in marks.items() if n not in backups for k in keys)
        gone = sorted(k for n in removed for k in marks.get(n, ()))
        if not self.dry_run:
            await self._delete_checked(gone + stray, label="source mark")
        marked = await to_thread(_union, [b.refs for b in staying.values()])
        # Chunks of shards not yet committed: no lock protects them until the commit (issue 16).
        # Their packs are pinned: neither deleted nor repacked while a record names them.
        recorded, pinned = await refs_of_shard_records(self.repo, now=began, dry_run=self.dry_run)
        marked |= recorded
        del backups, staying

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

        refs = sorted(sweep)
        if not self.dry_run:
            await self._delete_checked([chunk_key(r) for r in refs], label="chunk")
        plan = await plan_packs(
            self.repo, live, cutoff=cutoff, policy=self.repack,
            concurrency=self.config.concurrency, pinned=pinned,
        )  # fmt: skip
        written: dict[str, int] = {}
        if not self.dry_run:
            await self._delete_checked([pack_key(p) for p in sorted(plan.unused)], label="pack")
            repacker = Repacker(
                self.repo, live, policy=self.repack, lock=self.lock,
                delete=partial(self._delete_checked, label="pack"),
                concurrency=self.config.concurrency, buffer_budget=self.config.buffer_budget,
            )  # fmt: skip
            written = (await repacker.run(plan.repack)).new_packs
        if not self.dry_run:
            await self._delete_checked(orphans, label="INDEX")
        leftovers = await self.repo.store.remove_leftovers(cutoff, dry_run=self.dry_run)
        new_packs = len(written) if not self.dry_run else -(-plan.repack_live // self.pack_size)
        return PruneReport(
            dry_run=self.dry_run,
            grace=self.grace,
            decisions=decisions,
            chunks_deleted=len(refs),
            bytes_freed=sum(sweep.values()),
            chunks_in_use=in_use,
            chunks_young=young,
            bytes_young=bytes_young,
            leftovers=leftovers,
            orphan_indexes=len(orphans),
            orphan_marks=len(stray),
            packs_deleted=len(plan.unused),
            bytes_packs_deleted=plan.bytes_unused,
            packs_repacked=len(plan.repack),
            bytes_repacked=sum(plan.repack.values()),
            packs_written=new_packs,
            bytes_written=sum(written.values()) if not self.dry_run else plan.repack_live,
            packs_in_use=plan.in_use,
            packs_young=plan.young,
            bytes_packs_young=plan.bytes_young,
            packs_over_cap=len(plan.skipped),
            packs_small=plan.small,
        )

    async def _delete_checked(self, keys: list[str], *, label: str) -> None:
        """Delete ``keys`` in batches of ``DELETE_BATCH``, reading the lock back before each."""
        for start in range(0, len(keys), DELETE_BATCH):
            await self.lock.check()
            await self._delete_all(keys[start : start + DELETE_BATCH], label=label)

    async def _delete_all(self, keys: list[str], *, label: str) -> None:
        async with TaskPool(OPERATION, limit=self.config.concurrency) as pool:
            for key in keys:
                await pool.spawn(key, partial(self.repo.delete_object, key))
        if keys:
            log.debug("prune: deleted %d %ss", len(keys), label)


def _union(sets: list[frozenset[str]]) -> set[str]:
    return set().union(*sets)


__all__ = ["DEFAULT_GRACE", "PruneJob", "PruneReport"]
