"""A store wrapper that injects transient failures, latency and hangs, reproducibly."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Literal, TypeVar

from asyncbackup.errors import ConfigError, TransientStorageError
from asyncbackup.layout import LOCKS
from asyncbackup.storage.base import ObjectPage, Storage

T = TypeVar("T")
Fault = Literal["fail_before", "fail_after", "hang"]
Rule = Callable[[str, str], Fault | None]
"""Given (operation, key), the fault to inject into this call, or None for the seeded draw."""


class FaultyStorage(Storage):
    """Wraps ``inner`` so that a seeded fraction ``rate`` of operations fail transiently.

    Each draw depends only on the seed, the operation, the key and how many times that operation
    was called on that key, never on the order of calls: a concurrent run repeats exactly. (Lock
    objects, whose keys are random, count as one key.)

    A failure happens before the operation (nothing changed) or, for ``after_share`` of them,
    after it took effect (the object is stored, yet the caller sees an error). ``hang_rate`` of
    operations never answer, until the caller's timeout cancels them. ``latency`` seconds are
    added to every operation. ``rule`` picks faults for chosen keys, for targeted tests.
    ``injected`` counts every fault by kind.
    """

    def __init__(
        self,
        inner: Storage,
        *,
        rate: float = 0.0,
        after_share: float = 0.5,
        hang_rate: float = 0.0,
        latency: float = 0.0,
        seed: int = 0,
        rule: Rule | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for label, value in (
            ("rate", rate),
            ("after_share", after_share),
            ("hang_rate", hang_rate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault {label} must be between 0 and 1, not {value}")
        if latency < 0:
            raise ConfigError(f"latency must not be negative, not {latency}")
        self.inner = inner
        self.url = inner.url
        self.max_connections = inner.max_connections
        self.streams = inner.streams
        self.injected: Counter[Fault] = Counter()
        self._rate = rate
        self._after_share = after_share
        self._hang_rate = hang_rate
        self._latency = latency
        self._seed = seed
        self._calls: Counter[tuple[str, str]] = Counter()
        self._rule = rule
        self._sleep = sleep

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        put = self.inner.put
        await self._call("put", key, lambda: put(key, data, overwrite=overwrite, digest=digest))

    async def get(self, key: str) -> bytes:
        return await self._call("get", key, lambda: self.inner.get(key))

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        # Drawn as a get, as it was when the base class read the whole object through ``get``:
        # a seeded run faults the same reads. The inner store reads only the range (a range
        # GET on S3 or GCS), not a whole pack for one chunk's bytes.
        read = self.inner.get_range
        return await self._call("get", key, lambda: read(key, start, length))

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        # Drawn as a get: a seeded run faults the same downloads, streamed or not.
        fault = await self._before("get", key)
        async with aclosing(self.inner.stream(key)) as pieces:
            async for piece in pieces:
                yield piece
        if fault == "fail_after":
            raise TransientStorageError(f"injected fault after get {key}")

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        return await self._call("list", prefix, lambda: self.inner.list_objects(prefix, token))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, lambda: self.inner.delete(key))

    async def sync(self) -> None:
        await self.inner.sync()

    async def remove_leftovers(self, older_than: float, *, dry_run: bool = False) -> int:
        return await self.inner.remove_leftovers(older_than, dry_run=dry_run)

    async def mark_as_repository(self) -> None:
        await self.inner.mark_as_repository()

    async def holds_repository(self) -> bool:
        return await self.inner.holds_repository()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _draw(self, operation: str, key: str) -> Fault | None:
        if self._rule is not None and (fault := self._rule(operation, key)) is not None:
            return fault
        # A lock's key is random, new in every run: its draws go by the lock prefix instead,
        # so that a seeded run still repeats exactly.
        drawn = LOCKS if key.startswith(LOCKS) else key
        self._calls[operation, drawn] += 1
        rng = random.Random(f"{self._seed}/{operation}/{drawn}/{self._calls[operation, drawn]}")
        draw = rng.random()
        if draw < self._hang_rate:
            return "hang"
        if draw < self._hang_rate + self._rate:
            return "fail_after" if rng.random() < self._after_share else "fail_before"
        return None

    async def _before(self, operation: str, key: str) -> Fault | None:
        """Draw this call's fault and do what comes before the operation; the fault drawn."""
        fault = self._draw(operation, key)
        if self._latency:
            await self._sleep(self._latency)
        if fault is not None:
            self.injected[fault] += 1
        if fault == "hang":
            await asyncio.Event().wait()  # until the caller's timeout cancels us
        if fault == "fail_before":
            raise TransientStorageError(f"injected fault before {operation} {key}")
        return fault

    async def _call(self, operation: str, key: str, run: Callable[[], Awaitable[T]]) -> T:
        fault = await self._before(operation, key)
        result = await run()
        if fault == "fail_after":
            raise TransientStorageError(f"injected fault after {operation} {key}")
        return result
