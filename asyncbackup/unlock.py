"""``asyncbackup unlock``: remove the stale locks of a store (with ``force``, every lock)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncbackup.lock_records import Identity, UnreadableLock, pid_alive, read_locks
from asyncbackup.locks import Clock, LockSettings
from asyncbackup.repository import Repository

log = logging.getLogger("asyncbackup")


@dataclass(frozen=True)
class UnlockReport:
    """What ``unlock`` removed (each with why) and which live locks it left in place."""

    removed: list[str]
    kept: list[str]


async def unlock(
    repo: Repository,
    *,
    force: bool = False,
    settings: LockSettings | None = None,
    clock: Clock = time.time,
    here: Identity | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> UnlockReport:
    """Remove the stale locks of the store; with ``force``, every lock (a WARNING for each live
    one: a job still running under it is no longer protected)."""
    settings = settings if settings is not None else LockSettings()
    here = here if here is not None else Identity.of_this_process()
    now = clock()
    removed: list[str] = []
    kept: list[str] = []
    for lock in await read_locks(repo):
        if isinstance(lock, UnreadableLock):
            old = now - lock.modified > settings.stale_after
            reason = "unreadable, and older than the stale period" if old else None
        else:
            reason = lock.stale_reason(
                now=now, stale_after=settings.stale_after, here=here, alive=alive
            )
        if reason is None and not force:
            kept.append(lock.describe(now))
            continue
        if reason is None:
            log.warning(
                "removing the live lock of %s (--force): if that job is still running, a prune "
                "may now remove chunks under it",
                lock.describe(now),
            )
            reason = "live, removed with --force"
        await repo.delete_object(lock.key, guarded=False)
        removed.append(f"removed {lock.describe(now)}: {reason}")
    return UnlockReport(removed, kept)


__all__ = ["UnlockReport", "unlock"]
