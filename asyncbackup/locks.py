"""Repository locks: a backup holds a shared lock, prune an exclusive one (restic's model).

A lock is an object ``locks/<random id>`` holding JSON: its kind (shared or exclusive), host,
pid, user, operation, and its created and refreshed times (POSIX seconds, UTC). Any number of
shared locks may be held at once; an exclusive lock excludes every other lock.

- **Acquire**: write our lock, then list ``locks/``. If a live lock that conflicts with ours is
  there, delete ours, log what we wait for, back off (full jitter) and try again, until
  ``wait`` seconds have passed: then ``LockError``.
- **Mutual exclusion** rests on one property of the store: a listing that starts after a write
  has completed shows that object (strong read-after-write and list-after-write consistency:
  S3 since December 2020, GCS, a local file system). Of two jobs that each wrote their lock and
  then listed, take the one whose write completed later: its listing started after both writes
  completed, so it sees the other's lock and backs off (or both do, and retry). So two
  conflicting jobs never both hold their locks.
- **Refresh**: while held, the lock is rewritten every ``refresh_every`` seconds with a new
  ``refreshed`` time, never re-created if someone removed it.
- **Stale**: a lock not refreshed for ``stale_after`` seconds, or whose host (and pid namespace)
  is ours and whose pid is not alive, is stale: acquire ignores it with a WARNING, and
  ``asyncbackup unlock STORE`` removes it.
- **Trust**: a job trusts its own lock only while every gap between two of its successful writes,
  and the time since the last one, stayed under ``stale_after / 2``. ``guard()`` checks that (no
  I/O) before every attempt of a destructive or committing store call; ``check()`` also reads
  the lock back, before each batch of deletes and before a commit. A job that lost trust stops.

Why trust is enough: another job may only override our lock once it looks stale to *its*
clock, i.e. once ``stale_after`` has passed since a ``refreshed`` time we wrote. While we trust
the lock, each ``refreshed`` time we wrote was replaced (or is still current) within
``stale_after / 2`` of our clock. So, assuming clocks differ by less than ``stale_after / 4``
and no call we guard takes effect more than ``stale_after / 4`` after its guard passed (one
store request: its attempt timeout is 2 minutes; a pause of the process, a suspended VM, must
stay below that bound too), nobody can see our lock as stale while we still act on it. The
defaults (refresh every 5 minutes, stale after 30) leave 7.5 minutes for each.

The lock objects themselves (their JSON, their holder, when one is stale) are in
``lock_records.py``; ``unlock.py`` removes stale locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from asyncbackup.defaults import DEFAULT_LOCK_WAIT as DEFAULT_LOCK_WAIT  # re-exported
from asyncbackup.errors import ConfigError, LockError, ObjectNotFoundError, StorageError
from asyncbackup.layout import lock_key
from asyncbackup.lock_records import (
    EXCLUSIVE,
    SHARED,
    Identity,
    LockKind,
    LockRecord,
    UnreadableLock,
    age_text,
    pid_alive,
    read_locks,
)
from asyncbackup.repository import Repository

log = logging.getLogger("asyncbackup")
DEFAULT_REFRESH = 300.0
DEFAULT_STALE = 1800.0
Clock = Callable[[], float]
"""The time now, in POSIX seconds: the same clock every host's jobs compare."""
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class LockSettings:
    """How long a job waits for the lock, how often it refreshes it, when a lock is stale.

    ``stale_after`` must be the same for every job on a store (a job with a shorter one would
    override live locks): it is not a command-line option. ``enabled=False`` switches the
    protocol off, for the test that shows what happens without it.

    Raises:
        ConfigError: a negative wait, or a refresh interval above a quarter of the stale period
            (a job must survive a failed refresh and still trust its lock).
    """

    wait: float = DEFAULT_LOCK_WAIT
    refresh_every: float = DEFAULT_REFRESH
    stale_after: float = DEFAULT_STALE
    poll_ceiling: float = 5.0
    """The longest back-off between two attempts to acquire: bounds how long a job waiting
    for a lock sleeps past its release."""
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.wait < 0:
            raise ConfigError(f"--lock-wait must not be negative, not {self.wait:g} s")
        if not 0 < self.refresh_every <= self.stale_after / 4:
            raise ConfigError(
                f"the lock refresh interval must be positive and at most a quarter of the stale "
                f"period ({self.stale_after:g} s), not {self.refresh_every:g} s"
            )
        if self.poll_ceiling <= 0:
            raise ConfigError(f"poll_ceiling must be positive, not {self.poll_ceiling:g} s")

    @property
    def trusted_for(self) -> float:
        """How long a job trusts its lock after its last successful write of it."""
        return self.stale_after / 2


class RepositoryLock:
    """A job's lock on a repository, as an async context manager::

        async with RepositoryLock(repo, kind=SHARED, operation="backup") as lock:
            ...                      # read the store, upload
            await lock.check()       # before the commit (or each batch of deletes)
            ...                      # commit

    Entering acquires (waiting up to ``settings.wait``), starts the refresh task and installs
    ``guard`` on ``repo``; leaving stops the refresh and removes the lock.

    Raises (on entering):
        LockError: a conflicting live lock stayed for ``settings.wait`` seconds.
        StorageError: the store failed (the retries ran out).
    """

    def __init__(
        self,
        repo: Repository,
        *,
        kind: LockKind,
        operation: str,
        settings: LockSettings | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        identity: Identity | None = None,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.repo = repo
        self.kind: LockKind = kind
        self.settings = settings if settings is not None else LockSettings()
        self.key = lock_key(secrets.token_hex(16))
        self._clock = clock
        self._sleep = sleep
        self._alive = alive
        holder = identity if identity is not None else Identity.of_this_process()
        now = clock()
        self.record = LockRecord(self.key, kind, operation, holder, now, now)
        self._fresh_since = now  # our clock, just before our last successful write
        self._lost: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._held = False

    async def __aenter__(self) -> Self:
        if self.settings.enabled:
            try:
                await self._acquire()
            except BaseException:  # a store failure, a cancel: never leave our lock behind
                await self._remove()
                raise
            self._held = True
            self.repo.guard = self.guard
            self._refresher = asyncio.create_task(self._refresh_forever())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._held:
            return
        self._held = False
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        self.repo.guard = _lost_guard  # the job is over: nothing more may be deleted under it
        await self._remove()

    def guard(self) -> None:
        """Raise unless the lock may still be trusted (no I/O: it runs before every attempt of
        a destructive or committing call).

        Raises:
            LockError: the lock went unrefreshed too long, or was found removed.
        """
        if not self.settings.enabled:
            return
        if self._lost is None:
            age = self._clock() - self._fresh_since
            if age > self.settings.trusted_for:
                self._lost = (
                    f"this job could not refresh its lock {self.key} for {age_text(age)} "
                    "(another job may take it as stale after "
                    f"{age_text(self.settings.stale_after)})"
                )
        if self._lost is not None:
            raise LockError(f"{self.record.operation} stopped: {self._lost}; {self._outcome()}")

    async def check(self) -> None:
        """``guard()``, and read the lock back: it must still be in the store.

        Raises:
            LockError: the lock can no longer be trusted, or someone removed it.
        """
        if not self.settings.enabled:
            return
        self.guard()
        await self._still_there()
        self.guard()

    def _outcome(self) -> str:
        if self.record.operation == "backup":
            return "nothing was committed; run the backup again"
        return "what it removed so far is safely gone; run it again"

    async def _still_there(self) -> None:
        try:
            await self.repo.get_object(self.key, action="check lock")
        except ObjectNotFoundError:
            self._lost = (
                f"its lock {self.key} was removed (by 'asyncbackup unlock --force', or by a "
                "job that took it as stale)"
            )
            raise LockError(
                f"{self.record.operation} stopped: {self._lost}; {self._outcome()}"
            ) from None

    async def _acquire(self) -> None:
        deadline = self._clock() + self.settings.wait
        announced: set[str] = set()
        warned: set[str] = set()
        attempt = 0
        while True:
            attempt += 1
            self._fresh_since = self.record.refreshed
            await self._write(self.record)
            blockers = await self._blockers(warned)
            if not blockers:
                if attempt > 1:
                    log.info("%s: got the %s lock %s", self.record.operation, self.kind, self.key)
                return
            await self._remove()
            now = self._clock()
            waiting_for = "; ".join(b.describe(now) for b in blockers)
            if now >= deadline:
                raise LockError(
                    f"{self.record.operation} could not take the {self.kind} lock of "
                    f"{self.repo.store.url} within {age_text(self.settings.wait)} (--lock-wait): "
                    f"it is held by {waiting_for}. Run again once that job has finished; if it "
                    "is dead, its lock becomes stale after "
                    f"{age_text(self.settings.stale_after)} without refresh, and "
                    "'asyncbackup unlock STORE' removes stale locks"
                )
            for blocker in blockers:
                if blocker.key not in announced:
                    announced.add(blocker.key)
                    log.warning(
                        "%s waits for the %s lock: held by %s; waiting up to %s (--lock-wait)",
                        self.record.operation,
                        self.kind,
                        blocker.describe(now),
                        age_text(deadline - now),
                    )
            ceiling = min(self.settings.poll_ceiling, 0.2 * 2 ** min(attempt, 20))
            await self._sleep(min(random.uniform(0, ceiling), max(0.0, deadline - now)))
            stamp = self._clock()
            self.record = replace(self.record, created=stamp, refreshed=stamp)

    async def _blockers(self, warned: set[str]) -> list[LockRecord | UnreadableLock]:
        now = self._clock()
        blockers: list[LockRecord | UnreadableLock] = []
        for other in await read_locks(self.repo, but=self.key):
            if isinstance(other, UnreadableLock):
                reason = (
                    "unreadable and older than the stale period"
                    if now - other.modified > self.settings.stale_after
                    else None
                )
            elif not other.conflicts_with(self.kind):
                continue
            else:
                reason = other.stale_reason(
                    now=now,
                    stale_after=self.settings.stale_after,
                    here=self.record.holder,
                    alive=self._alive,
                )
            if reason is None:
                blockers.append(other)
            elif other.key not in warned:
                warned.add(other.key)
                log.warning(
                    "%s ignores the stale lock of %s: %s; 'asyncbackup unlock STORE' removes it",
                    self.record.operation,
                    other.describe(now),
                    reason,
                )
        return blockers

    async def _write(self, record: LockRecord) -> None:
        """Store ``record``; the lock stays trusted only if the time from the previous write's
        stamp to this write's completion stayed within ``trusted_for``."""
        stamp = record.refreshed
        await self.repo.put_object(self.key, record.to_json(), action="write lock")
        done = self._clock()
        if done - self._fresh_since > self.settings.trusted_for and self._lost is None:
            self._lost = (
                f"its lock {self.key} went {age_text(done - self._fresh_since)} without a "
                "successful refresh"
            )
        self._fresh_since = stamp

    async def _refresh_forever(self) -> None:
        while self._lost is None:
            await self._sleep(self.settings.refresh_every)
            try:
                await self._still_there()  # never bring back a lock someone removed
                stamp = self._clock()
                self.record = replace(self.record, refreshed=stamp)
                await self._write(self.record)
            except LockError as exc:
                log.error("%s", exc)
                return
            except StorageError as exc:
                log.warning(
                    "%s: could not refresh its lock %s (%s); trying again in %s",
                    self.record.operation,
                    self.key,
                    exc,
                    age_text(self.settings.refresh_every),
                )

    async def _remove(self) -> None:
        try:
            await self.repo.delete_object(self.key, guarded=False)
        except StorageError as exc:
            log.warning(
                "could not remove the lock %s (%s): it stays until it is stale (%s without "
                "refresh), or 'asyncbackup unlock STORE' removes it once this job is gone",
                self.key,
                exc,
                age_text(self.settings.stale_after),
            )


def _lost_guard() -> None:
    raise LockError("the job's lock was released: nothing more may be deleted or committed")


__all__ = [
    "EXCLUSIVE",
    "SHARED",
    "Identity",
    "LockKind",
    "LockRecord",
    "LockSettings",
    "RepositoryLock",
]
