"""A store in a dict: for tests, and for services that embed the engine and want no disk."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from asyncbackup.errors import ObjectExistsError, ObjectNotFoundError
from asyncbackup.storage.base import ObjectInfo, ObjectPage, Storage


class MemoryStorage(Storage):
    """Objects in RAM. ``page_size`` is small enough to make tests walk several listing pages;
    ``clock`` stamps each put (POSIX seconds), injectable so tests can age objects."""

    def __init__(
        self,
        *,
        url: str = "memory://",
        page_size: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.objects: dict[str, bytes] = {}
        self.modified: dict[str, float] = {}
        self._page_size = page_size
        self._clock = clock

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        if not overwrite and key in self.objects:
            raise ObjectExistsError(f"{self.url}: {key} exists already")
        self.objects[key] = bytes(data)
        self.modified[key] = self._clock()

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFoundError(f"{self.url}: no object {key}") from None

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        start = bisect.bisect_right(keys, token) if token is not None else 0
        page = keys[start : start + self._page_size]
        more = start + self._page_size < len(keys)
        # Objects a test placed straight into ``objects`` have no stamp: the epoch, i.e. old.
        infos = [ObjectInfo(k, len(self.objects[k]), self.modified.get(k, 0.0)) for k in page]
        return infos, (page[-1] if more else None)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)
        self.modified.pop(key, None)
