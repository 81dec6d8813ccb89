"""The one seam between the engine and a store: a handful of async operations on keys."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

STREAM_PIECE = 256 * 1024
"""The largest piece ``Storage.stream`` gives at a time (stores that stream): what a restore's
download holds besides the block it gathers (``fetch.py``)."""


def within_piece_size(received: bytes) -> Iterator[bytes]:
    """``received`` as pieces of at most ``STREAM_PIECE`` bytes: itself (no copy) if it fits;
    nothing if it is empty (the end of an HTTP chunk)."""
    if len(received) <= STREAM_PIECE:
        if received:
            yield received
        return
    for start in range(0, len(received), STREAM_PIECE):
        yield received[start : start + STREAM_PIECE]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as a listing sees it."""

    key: str
    size: int
    modified: float
    """When the object was last written, in POSIX seconds (UTC), by the store's own clock:
    the file's mtime, S3's LastModified, GCS's ``updated``. Prune's grace period reads it."""


ListPage = tuple[list[str], str | None]
"""Keys of one listing page, and the token of the next page (None on the last)."""

ObjectPage = tuple[list[ObjectInfo], str | None]
"""Objects of one listing page, and the token of the next page (None on the last)."""


class Storage(ABC):
    """A flat key-value store of immutable objects, rooted at the prefix of its URL.

    Keys are relative POSIX-like paths (``chunks/ab12...``). Every method raises only
    ``StorageError`` subclasses: ``TransientStorageError`` for what a retry may fix,
    ``PermanentStorageError`` for what it cannot. Implementations do no retrying of their own:
    the engine's retry layer is the only one.
    """

    url: str
    streams = False
    """Whether ``stream`` gives an object in pieces of at most ``STREAM_PIECE`` bytes (rather
    than whole, by ``get``): a restore budgets a download by it."""
    max_connections: int | None = None
    """How many requests the store can have in flight at once; None when it has no pool. The
    engine refuses a concurrency above it: the surplus transfers would wait for a connection
    inside the SDK, where the per-attempt timeout would take the wait for a hung request."""

    @abstractmethod
    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        """Store ``data`` under ``key``, all or nothing.

        ``digest`` is the SHA-256 (hex) of ``data`` when the caller knows it already; a store
        whose server can check it sends it along, so the server refuses bytes damaged in transit.

        Raises:
            ObjectExistsError: ``overwrite`` is False and the key exists.
        """

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises:
            ObjectNotFoundError: no such key.
        """

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        """The bytes stored under ``key``, in order, a piece at a time as they arrive, so the
        caller can write them out without holding the object whole. Close it when done early
        (``contextlib.aclosing``): a store releases its connection then. Stores that can
        stream override this, in pieces of at most ``STREAM_PIECE`` bytes; by default the
        object is read whole by ``get`` and given as one piece.

        Raises:
            ObjectNotFoundError: no such key (on the first piece).
        """
        yield await self.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes of ``key`` from offset ``start`` (fewer at its end).
        Stores whose server serves ranges override this; by default the whole object is read.

        Raises:
            ObjectNotFoundError: no such key.
        """
        data = await self.get(key)
        return data[start : start + length]

    @abstractmethod
    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        """Return one page of the objects whose keys start with ``prefix`` (sorted by key), with
        their sizes and modification times, and the next page's token."""

    async def list_page(self, prefix: str, token: str | None = None) -> ListPage:
        """Return one page of the keys that start with ``prefix``, and the next page's token."""
        objects, next_token = await self.list_objects(prefix, token)
        return [o.key for o in objects], next_token

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    async def sync(self) -> None:  # noqa: B027 - most stores are durable once put returns
        """Make every completed ``put`` durable. The engine calls it before it commits."""

    async def remove_leftovers(self, older_than: float, *, dry_run: bool = False) -> int:
        """Remove what writes cut short by a crash left behind, if last written before
        ``older_than`` (a UNIX time); how many (or, with ``dry_run``, would be). Object stores
        write all or nothing and leave none; prune calls it with its grace period."""
        return 0

    async def mark_as_repository(self) -> None:  # noqa: B027 - object stores need no marker
        """Record that a repository lives here; every backup calls it before its first write.
        A local directory writes a marker file, so that it is still recognised as a store once
        every backup in it is deleted (see ``holds_repository``)."""

    async def holds_repository(self) -> bool:
        """Whether a repository lives here, so that commands that read one can say "no store
        at PATH" instead of "no backups". Object stores cannot tell a new prefix from a
        mistyped one cheaply, and answer True."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - stores without connections have nothing to close
        """Release connections and clients this store created."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
