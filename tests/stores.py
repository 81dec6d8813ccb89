"""Store wrappers for tests: they watch or steer calls the way the engine's users cannot."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from asyncbackup.errors import PermanentStorageError
from asyncbackup.storage.base import ObjectPage, Storage
from asyncbackup.storage.faulty import Fault, Rule


class WatchedStorage(Storage):
    """Counts calls per (operation, key) and the most puts ever in flight at once, and notes when
    each key's last put returned (``stored_at``, monotonic seconds) and the order in which puts
    started, returned and failed, and deletes returned (``events``: ("put" | "stored" |
    "failed" | "deleted", key)).

    ``on_put`` runs before each put of the inner store, ``on_delete`` before each delete: tests
    use them to fail, block or cancel.
    """

    def __init__(
        self,
        inner: Storage,
        on_put: Callable[[str], Awaitable[None]] | None = None,
        *,
        on_delete: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_tasks = 0
        self.stored_at: dict[str, float] = {}
        self.events: list[tuple[str, str]] = []
        self._on_put = on_put
        self._on_delete = on_delete

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        self.calls["put", key] += 1
        self.max_tasks = max(self.max_tasks, len(asyncio.all_tasks()))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.events.append(("put", key))
        try:
            if self._on_put is not None:
                await self._on_put(key)
            await self.inner.put(key, data, overwrite=overwrite, digest=digest)
            self.stored_at[key] = time.monotonic()
            self.events.append(("stored", key))
        except BaseException:
            self.events.append(("failed", key))
            raise
        finally:
            self.in_flight -= 1

    async def get(self, key: str) -> bytes:
        self.calls["get", key] += 1
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        self.calls["get_range", key] += 1
        return await self.inner.get_range(key, start, length)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        self.calls["list", prefix] += 1
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        self.calls["delete", key] += 1
        if self._on_delete is not None:
            await self._on_delete(key)
        await self.inner.delete(key)
        self.events.append(("deleted", key))

    def puts(self, prefix: str = "") -> int:
        return sum(
            n for (op, key), n in self.calls.items() if op == "put" and key.startswith(prefix)
        )


def deny(key_fragment: str) -> Callable[[str], Awaitable[None]]:
    """An ``on_put`` (or ``on_delete``) that refuses, permanently, every key containing
    ``key_fragment``."""

    async def on_put(key: str) -> None:
        if key_fragment in key:
            raise PermanentStorageError(f"access denied to {key}")

    return on_put


def fail_times(times: int, operation: str, key: str, fault: Fault = "fail_before") -> Rule:
    """A FaultyStorage rule: ``fault`` on the first ``times`` calls of ``operation`` on ``key``."""
    left = times

    def rule(op: str, k: str) -> Fault | None:
        nonlocal left
        if op == operation and k == key and left:
            left -= 1
            return fault
        return None

    return rule
