"""Repository locks as stored: ``locks/<id>`` objects, who holds them, and when one is stale.

The protocol that uses them (acquire, refresh, trust) is in ``locks.py``; removing stale locks
is ``unlock.py``.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from asyncbackup.errors import ObjectNotFoundError
from asyncbackup.layout import LOCKS
from asyncbackup.repository import Repository

LockKind = Literal["shared", "exclusive"]
SHARED: LockKind = "shared"
EXCLUSIVE: LockKind = "exclusive"


@dataclass(frozen=True)
class Identity:
    """Who holds a lock: host, pid, user, and the pid namespace (so that two containers with
    the same host name never judge each other's pids)."""

    host: str
    pid: int
    user: str
    pid_namespace: str = ""

    @classmethod
    def of_this_process(cls) -> Identity:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        return cls(socket.gethostname(), os.getpid(), user, namespace)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: alive is the safe answer
    return True


@dataclass(frozen=True)
class LockRecord:
    """One lock as stored in ``locks/<id>``."""

    key: str
    kind: LockKind
    operation: str
    holder: Identity
    created: float
    refreshed: float

    def to_json(self) -> bytes:
        doc = {
            "kind": self.kind,
            "operation": self.operation,
            **asdict(self.holder),
            "created": iso_utc(self.created),
            "refreshed": iso_utc(self.refreshed),
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, key: str, data: bytes) -> LockRecord:
        """Parse a lock object.

        Raises:
            ValueError: it is not a lock this version can read.
        """
        try:
            doc = json.loads(data)
            kind = doc["kind"]
            if kind not in (SHARED, EXCLUSIVE):
                raise ValueError(f"unknown kind {kind!r}")
            holder = Identity(
                str(doc["host"]), int(doc["pid"]), str(doc["user"]), str(doc["pid_namespace"])
            )
            created = datetime.fromisoformat(doc["created"]).timestamp()
            refreshed = datetime.fromisoformat(doc["refreshed"]).timestamp()
            return cls(key, kind, str(doc["operation"]), holder, created, refreshed)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a lock: {exc!r}") from None

    def conflicts_with(self, kind: LockKind) -> bool:
        return EXCLUSIVE in (kind, self.kind)

    def describe(self, now: float) -> str:
        """What a person needs to find the job: what, where, since when."""
        h = self.holder
        return (
            f"{self.operation} ({self.kind} lock {self.key}) of pid {h.pid} on host {h.host} "
            f"by user {h.user}, since {iso_utc(self.created)}, refreshed "
            f"{age_text(now - self.refreshed)} ago"
        )

    def stale_reason(
        self, *, now: float, stale_after: float, here: Identity, alive: Callable[[int], bool]
    ) -> str | None:
        """Why this lock is stale, or None if it is live."""
        if now - self.refreshed > stale_after:
            age, limit = age_text(now - self.refreshed), age_text(stale_after)
            return f"not refreshed for {age} (stale after {limit})"
        h = self.holder
        same_host = (h.host, h.pid_namespace) == (here.host, here.pid_namespace)
        if same_host and h.pid != here.pid and not alive(h.pid):
            return f"its process {h.pid} is gone from this host"
        return None


@dataclass(frozen=True)
class UnreadableLock:
    """An object under ``locks/`` that is not a lock we can read: it counts as a live
    exclusive lock until it is older than the stale period (by the store's clock)."""

    key: str
    modified: float
    problem: str

    def describe(self, now: float) -> str:
        age = age_text(now - self.modified)
        return f"unreadable lock {self.key} ({self.problem}), written {age} ago"


async def read_locks(repo: Repository, *, but: str = "") -> list[LockRecord | UnreadableLock]:
    """Every lock in the store except ``but`` (a lock removed between the listing and its read
    is skipped)."""
    found: list[LockRecord | UnreadableLock] = []
    async for page in repo.object_pages(LOCKS):
        for obj in page:
            if obj.key == but:
                continue
            try:
                data = await repo.get_object(obj.key, action="read lock")
            except ObjectNotFoundError:
                continue
            try:
                found.append(LockRecord.from_json(obj.key, data))
            except ValueError as exc:
                found.append(UnreadableLock(obj.key, obj.modified, str(exc)))
    return found


def iso_utc(t: float) -> str:
    """``t`` (POSIX seconds) as an ISO 8601 UTC time, to the second: how lock times are stored."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def age_text(seconds: float) -> str:
    """A duration for a person: seconds, minutes or hours."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
