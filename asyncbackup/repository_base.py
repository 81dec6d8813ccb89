"""A job's retried calls on a store: listings a page at a time, and the get, put and delete of
one object, each destructive or committing attempt behind the job's guard. ``Repository``
(repository.py) builds the repository format on them; ``BackupObjects``
(repository_backups.py) a backup's MANIFEST and INDEX.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from asyncbackup.config import DEFAULT_MAX_MANIFEST_SIZE
from asyncbackup.retry import Retrier, Transfer
from asyncbackup.storage.base import ObjectInfo, Storage

T = TypeVar("T")
Fetch = Callable[[str, str | None], Awaitable[tuple[list[T], str | None]]]
"""One page of a listing: (prefix, token) -> (items, next token)."""


def _unguarded() -> None:
    """The guard of a job that holds no lock: nothing to check."""


class RepositoryBase:
    """One job's retried calls on a store, and the guard its destructive ones pass."""

    def __init__(
        self,
        store: Storage,
        retrier: Retrier,
        *,
        operation: str,
        manifest_limit: int = DEFAULT_MAX_MANIFEST_SIZE,
    ) -> None:
        self.store = store
        self.retrier = retrier
        self.operation = operation
        self.manifest_limit = manifest_limit
        self.guard: Callable[[], None] = _unguarded

    def _guarded(self, call: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
        async def attempt() -> T:
            self.guard()  # each attempt: a retry may come long after the first try
            return await call()

        return attempt

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, one retried request per listing page."""
        return await self._all_pages(prefix, self.store.list_page)

    def object_pages(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        """The objects under ``prefix``, with their sizes and ages, a page at a time (each page
        one retried request), so a caller need not hold a listing of a million chunks."""
        return self._pages(prefix, self.store.list_objects)

    async def _all_pages(self, prefix: str, fetch: Fetch[T]) -> list[T]:
        return [item async for page in self._pages(prefix, fetch) for item in page]

    async def _pages(self, prefix: str, fetch: Fetch[T]) -> AsyncIterator[list[T]]:
        token: str | None = None
        page = 1
        while True:
            what = Transfer(self.operation, "list", prefix, f"page {page}")
            batch, token = await self.retrier.run(what, partial(fetch, prefix, token))
            yield batch
            if token is None:
                return
            page += 1

    async def delete_object(self, key: str, *, guarded: bool = True) -> None:
        """Remove ``key``, retried; a key already gone is not an error. Each attempt passes the
        job's ``guard`` first, unless ``guarded`` is False (a lock removing itself).

        Raises:
            LockError: the job's lock can no longer be trusted; nothing more is deleted.
        """
        call = lambda: self.store.delete(key)  # noqa: E731
        what = Transfer(self.operation, "delete", key)
        await self.retrier.run(what, self._guarded(call) if guarded else call)

    async def get_object(self, key: str, *, action: str) -> bytes:
        """The bytes of ``key``, retried.

        Raises:
            ObjectNotFoundError: no such key.
        """
        return await self.retrier.run(
            Transfer(self.operation, action, key), lambda: self.store.get(key)
        )

    async def put_object(
        self, key: str, data: bytes, *, action: str, guarded: bool = False
    ) -> None:
        """Store ``data`` under ``key`` (overwriting), retried; a small object (a lock), so
        it pays nothing to a bandwidth limit, which caps the data. With ``guarded``, each
        attempt passes the job's ``guard`` first (a shard record, which commits a shard)."""
        what = Transfer(self.operation, action, key)
        call = lambda: self.store.put(key, data)  # noqa: E731
        await self.retrier.run(what, self._guarded(call) if guarded else call)
