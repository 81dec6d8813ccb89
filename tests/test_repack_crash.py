"""A repack stopped at every store call it makes, and a reader racing it: the invariant of
``asyncbackup/repack.py`` (every committed backup's INDEX names packs that exist, holding its
chunks), checked after each stop, deterministically, on the memory store.

A crash is modelled exactly: after its Nth store write or delete, the prune's store accepts no
more (a killed process sends nothing), so the store holds what the first N calls did. Then a
prune runs again, as the next night's would, and must end in the same state as a prune that
was never stopped.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from asyncbackup import BackupEngine, MemoryStorage, RetentionPolicy
from asyncbackup.errors import ObjectNotFoundError, PermanentStorageError
from asyncbackup.layout import pack_key
from asyncbackup.packs import PackIndex
from asyncbackup.storage.base import ObjectPage, Storage
from tests.conftest import fast_config
from tests.packed import drop_chunk_objects, load_index, pack_backup, unreadable_chunks
from tests.test_repack import a, b, retarget, write_files

KEEP_TWO = RetentionPolicy(keep_last=2)


class CrashingStorage(Storage):
    """A store that stops taking writes and deletes after ``after`` of them: a killed job."""

    def __init__(self, inner: MemoryStorage, after: int | None) -> None:
        self.inner = inner
        self.url = inner.url
        self.left = after
        self.calls: list[str] = []  # the writes and deletes that landed, in order

    def _write(self, what: str) -> None:
        if self.left is not None:
            if self.left == 0:
                raise PermanentStorageError(f"{what}: the job was killed before it")
            self.left -= 1
        self.calls.append(what)

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        self._write(f"put {key}")
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def delete(self, key: str) -> None:
        self._write(f"delete {key}")
        await self.inner.delete(key)

    async def sync(self) -> None:
        self._write("sync")

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self.inner.get_range(key, start, length)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        return await self.inner.list_objects(prefix, token)


def copy_of(store: MemoryStorage) -> MemoryStorage:
    copy = MemoryStorage()
    copy.objects, copy.modified = dict(store.objects), dict(store.modified)
    return copy


async def three_backups(tmp_path: Path) -> MemoryStorage:
    """ "old" (20 chunks in 2 packs), then "mid" and "new", which each keep 5 chunks of old's
    first pack and add packs of their own. A prune keeping 2 deletes old's second pack and
    repacks its first, rewriting the INDEXes of both "mid" and "new"."""
    store = MemoryStorage()
    engine = BackupEngine(store, fast_config())
    source = tmp_path / "src"
    write_files(source, a(20))
    await engine.backup(source, name="old")
    known = await pack_backup(store, "old", per_pack=10)
    for name, extra in (("mid", [f"c{i:02d}" for i in range(5)]), ("new", b(5))):
        retarget(source, a(5) + extra)
        await engine.backup(source, name=name)
        index = await pack_backup(store, name, per_pack=10, known=known)
        known.update(index)
    await drop_chunk_objects(store)
    return store


async def prune(store: Storage) -> None:
    await BackupEngine(store, fast_config()).prune(KEEP_TWO, grace=0)


def without_locks(store: MemoryStorage) -> None:
    """What ``asyncbackup unlock`` does with the lock of a job that was killed."""
    for key in [k for k in store.objects if k.startswith("locks/")]:
        del store.objects[key]


async def test_a_repack_stopped_at_any_store_call_leaves_every_index_readable(
    tmp_path: Path,
) -> None:
    base = await three_backups(tmp_path)
    whole = CrashingStorage(copy_of(base), None)
    await prune(whole)
    final = dict(whole.inner.objects)
    assert await unreadable_chunks(whole.inner) == []
    calls = whole.calls
    assert sum(c.startswith("put backups/") and c.endswith("/INDEX") for c in calls) == 2
    assert sum(c.startswith("delete packs/") for c in calls) == 2  # old's unused and repacked

    stopped_with_damage = []
    for after in range(len(calls)):
        store = copy_of(base)
        crashing = CrashingStorage(store, after)
        with contextlib.suppress(Exception):  # killed there: any error is expected
            await prune(crashing)
        if await unreadable_chunks(store):
            stopped_with_damage.append(calls[after])
        without_locks(store)
        await prune(store)  # the next prune finishes the work
        assert await unreadable_chunks(store) == [], calls[after]
        assert set(store.objects) == set(final), f"stopped before {calls[after]}"
    assert stopped_with_damage == []
    kinds = [
        "lock" if "locks/" in c else c if c == "sync" else c.split()[0] + " " + c.split()[1][:6]
        for c in calls
    ]  # e.g. "put packs/", "delete backup"
    assert kinds == [
        "lock",
        "delete backup",
        "delete backup",
        "delete backup",
        "delete packs/",  # old's MANIFEST, INDEX, source mark, pack
        "put packs/",
        "sync",
        "put backup",
        "put backup",
        "sync",
        "delete packs/",
        "lock",
    ], calls  # the new pack durable before an INDEX names it; the old pack deleted last


async def read_with_stale_index(
    store: MemoryStorage, name: str, index: PackIndex, *, reread: bool
) -> list[str]:
    """Read every packed chunk of ``name`` from the places ``index`` (read earlier) gives; a
    missing pack makes the reader read the INDEX again, once, as the packs reader does (with
    ``reread``). The refs it could not read."""
    failed = []
    current = index
    for ref in sorted(index.places):
        place = current.places[ref]
        try:
            await store.get_range(pack_key(place.pack), place.offset, place.length)
        except ObjectNotFoundError:
            if not reread:
                failed.append(ref)
                continue
            current = await load_index(store, name)
            place = current.places[ref]
            try:
                await store.get_range(pack_key(place.pack), place.offset, place.length)
            except ObjectNotFoundError:
                failed.append(ref)
    return failed


async def test_a_restore_racing_a_repack_finds_every_chunk_by_reading_the_index_again(
    tmp_path: Path,
) -> None:
    base = await three_backups(tmp_path)
    whole = CrashingStorage(copy_of(base), None)
    await prune(whole)
    stale = await load_index(base, "new")  # read before the prune began
    racing_failed = 0
    for after in range(len(whole.calls) + 1):  # the reader reads between the prune's calls
        store = copy_of(base)
        with contextlib.suppress(Exception):  # killed there: any error is expected
            await prune(CrashingStorage(store, after))
        assert await read_with_stale_index(store, "new", stale, reread=True) == []
        racing_failed += bool(await read_with_stale_index(store, "new", stale, reread=False))
    # Without the second read the race is real: once the old pack is gone, the stale places fail.
    assert racing_failed >= 2
