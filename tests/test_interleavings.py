"""One backup and one prune, driven through every ordering of their store operations that touch
the protocol: no committed MANIFEST may name a missing chunk. With the protocol switched off,
some orderings destroy a backup: the test shows that too, so it can fail.

How: each job reaches the store through ``Stepped``, which makes every call that another job's
calls do not commute with (a write or a listing of ``locks/``, ``chunks/`` or ``backups/``) wait
for its turn. A scheduler grants one turn at a time, so exactly one job runs between two turns,
and explores the orderings depth first (stateless model checking: each run replays a prefix of
choices, then takes the first option at each new choice point, and the alternatives are queued).
Reads of single objects and the sync commute with everything the other job does and run
freely. No sleeps: a lock's back-off is a turn too, and time is a fake clock that moves 1 ms per
turn and 1 s per back-off.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asyncbackup import BackupEngine, MemoryStorage, RetentionPolicy
from asyncbackup.errors import LockError
from asyncbackup.locks import LockSettings
from asyncbackup.storage.base import ObjectPage, Storage
from tests.conftest import fast_config
from tests.test_prune import Clock

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
JOBS = ("B", "P")  # the backup, the prune


def marked(operation: str, key: str) -> bool:
    """Whether a call may not commute with the other job's calls: it waits for its turn."""
    if operation == "list":
        return key in ("locks/", "chunks/", "backups/")
    if "/SOURCE." in key:
        # A backup's source mark: a hint the parent search checks against the MANIFEST's head,
        # which no chunk depends on. Prune removes only marks it listed under its lock (of the
        # backups it removes, or with no MANIFEST), so their order cannot damage a backup.
        return False
    return operation in ("put", "delete")


@dataclass
class Turns:
    """The scheduler's state for one run: who waits for a turn, what was chosen where."""

    prefix: list[str]
    decisions: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    waiting: dict[str, list[tuple[asyncio.Future[None], str]]] = field(
        default_factory=lambda: {job: [] for job in JOBS}
    )
    trace: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def turn(self, job: str, what: str) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[job].append((granted, what))
        self.changed.set()
        await granted


class Stepped(Storage):
    """One job's view of the shared store: marked calls wait for the job's turn."""

    def __init__(self, inner: Storage, job: str, turns: Turns) -> None:
        self.inner = inner
        self.url = inner.url
        self.job = job
        self.turns = turns

    async def _turn(self, operation: str, key: str) -> None:
        if marked(operation, key):
            await self.turns.turn(self.job, f"{operation} {key[:16]}")

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        await self._turn("put", key)
        await self.inner.put(key, data, overwrite=overwrite, digest=digest)

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        await self._turn("list", prefix)
        return await self.inner.list_objects(prefix, token)

    async def delete(self, key: str) -> None:
        await self._turn("delete", key)
        await self.inner.delete(key)


@dataclass
class World:
    """The store before the race: ``keep`` (chunk K) committed, and the chunk X of a deleted
    backup, both a day old; a source that reuses X and adds a new chunk Y."""

    objects: dict[str, bytes]
    modified: dict[str, float]
    source: Path


async def make_world(tmp_path: Path) -> World:
    clock = Clock(T0)
    memory = MemoryStorage(clock=clock.posix)
    reused = random.Random(1).randbytes(3000)
    for name, files in (("old", {"a.bin": reused}), ("keep", {"k.txt": b"kept\n" * 50})):
        root = tmp_path / name
        root.mkdir()
        for file, data in files.items():
            (root / file).write_bytes(data)
        await BackupEngine(memory, fast_config(), clock=clock).backup(root, name=name)
    await BackupEngine(memory).delete("old")
    source = tmp_path / "new"
    source.mkdir()
    (source / "a.bin").write_bytes(reused)
    (source / "n.txt").write_text("new data: one new chunk\n")
    assert not any(k.startswith("locks/") for k in memory.objects)
    return World(dict(memory.objects), dict(memory.modified), source)


@dataclass
class Outcome:
    trace: list[str]
    backup: str  # committed, or why not
    prune: str
    damaged: dict[str, set[str]]  # committed backup -> the chunks it names that are gone


async def run_once(world: World, turns: Turns, locking: LockSettings) -> Outcome:
    clock = Clock(T0 + timedelta(days=1))
    memory = MemoryStorage(clock=clock.posix)
    memory.objects, memory.modified = dict(world.objects), dict(world.modified)

    def sleep_of(job: str) -> object:
        async def sleep(seconds: float) -> None:
            if seconds == locking.refresh_every:
                await asyncio.Event().wait()  # no refresh: a run lasts a fake second or two
            await turns.turn(job, "back off")
            clock.now += timedelta(seconds=1)

        return sleep

    def engine(job: str) -> BackupEngine:
        return BackupEngine(
            Stepped(memory, job, turns),
            fast_config(concurrency=1),
            clock=clock,
            locking=locking,
            lock_sleep=sleep_of(job),  # type: ignore[arg-type]
        )

    async def backup() -> str:
        try:
            await engine("B").backup(world.source, name="new")
        except LockError as exc:
            return f"gave up: {exc}"
        return "committed"

    async def prune() -> str:
        try:
            report = await engine("P").prune(RetentionPolicy(keep_last=5), grace=0)
        except LockError as exc:
            return f"gave up: {exc}"
        return f"deleted {report.chunks_deleted}"

    tasks = {"B": asyncio.create_task(backup()), "P": asyncio.create_task(prune())}
    for task in tasks.values():
        task.add_done_callback(lambda _: turns.changed.set())
    while True:
        # Settle: every job waits for a turn or has ended; only then is a choice made.
        while not all(tasks[j].done() or turns.waiting[j] for j in JOBS):
            turns.changed.clear()
            await turns.changed.wait()
        options = tuple(j for j in JOBS if turns.waiting[j])
        if not options:
            break
        choice = options[0]
        if len(options) > 1:
            at = len(turns.decisions)
            choice = turns.prefix[at] if at < len(turns.prefix) else options[0]
            turns.decisions.append((choice, options))
        granted, what = turns.waiting[choice].pop(0)
        turns.trace.append(f"{choice} {what}")
        clock.now += timedelta(milliseconds=1)
        granted.set_result(None)
    outcome = Outcome(turns.trace, await tasks["B"], await tasks["P"], {})
    for name in await BackupEngine(memory).list_backups():
        refs = (await BackupEngine(memory).manifest(name.name)).refs()
        gone = {r for r in refs if "chunks/" + r not in memory.objects}
        if gone:
            outcome.damaged[name.name] = gone
    assert not any(k.startswith("locks/") for k in memory.objects), outcome.trace
    return outcome


async def explore(world: World, locking: LockSettings) -> list[Outcome]:
    """Every ordering: depth first over the choice points, each run from a fresh store."""
    outcomes: list[Outcome] = []
    prefixes: list[list[str]] = [[]]
    while prefixes:
        prefix = prefixes.pop()
        turns = Turns(prefix)
        outcomes.append(await run_once(world, turns, locking))
        chosen = [c for c, _ in turns.decisions]
        for at in range(len(prefix), len(turns.decisions)):
            for other in turns.decisions[at][1]:
                if other != chosen[at]:
                    prefixes.append([*chosen[:at], other])
    return outcomes


@pytest.mark.parametrize("wait", [0.0, 1.0], ids=["no-wait", "one-retry"])
async def test_no_ordering_of_a_backup_and_a_prune_destroys_a_committed_backup(
    tmp_path: Path, wait: float, report: object
) -> None:
    world = await make_world(tmp_path)
    outcomes = await explore(world, LockSettings(wait=wait))
    damaged = [o for o in outcomes if o.damaged]
    assert damaged == []
    committed = sum(o.backup == "committed" for o in outcomes)
    pruned = sum(o.prune.startswith("deleted") for o in outcomes)
    # Every ordering ends with each job done or refused with a clear LockError; in some both
    # proceed, one after the other, and in each the prune then removed the old chunk (backup
    # not there yet) or kept it (backup committed first).
    assert all(o.backup == "committed" or "could not take the shared lock" in o.backup
               for o in outcomes)  # fmt: skip
    assert all(o.prune.startswith("deleted") or "could not take the exclusive lock" in o.prune
               for o in outcomes)  # fmt: skip
    both = [o for o in outcomes if o.backup == "committed" and o.prune.startswith("deleted")]
    assert {o.prune for o in both} == {"deleted 0", "deleted 1"}
    assert committed and pruned
    report(  # type: ignore[operator]
        f"wait {wait:g}s: {len(outcomes)} orderings, {committed} committed backups, "
        f"{pruned} prunes that swept, damaged: 0"
    )


async def test_without_the_protocol_some_ordering_destroys_a_committed_backup(
    tmp_path: Path,
) -> None:
    """The same exploration with the locks switched off: the test above can fail."""
    world = await make_world(tmp_path)
    outcomes = await explore(world, LockSettings(enabled=False))
    damaged = [o for o in outcomes if o.damaged]
    assert all(o.backup == "committed" for o in outcomes)  # it never even noticed
    assert damaged, "no ordering damaged a backup: the exploration misses the race"
    # The case: the backup saw the old chunk X in its listing and skipped it; the
    # prune, which had read the MANIFESTs before the backup committed, removed it.
    [x] = {k for k in world.objects if k.startswith("chunks/")} - {
        "chunks/" + r for r in await manifest_refs(world, "keep")
    }
    reused = [o for o in damaged if x.removeprefix("chunks/") in o.damaged["new"]]
    assert reused
    trace = reused[0].trace
    order = [
        next(i for i, t in enumerate(trace) if t.startswith(step))
        for step in ("B list chunks/", "P list backups/", "P delete chunks/", "B put backups/")
    ]
    assert order[0] < order[2] and order[1] < order[3], trace


async def manifest_refs(world: World, name: str) -> set[str]:
    memory = MemoryStorage()
    memory.objects = dict(world.objects)
    return (await BackupEngine(memory).manifest(name)).refs()
