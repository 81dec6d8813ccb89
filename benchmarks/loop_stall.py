"""How long asyncbackup keeps the event loop waiting: parsing a large MANIFEST, and whole backups.

A probe task asks for 1 ms sleeps and records how late it wakes, while the work runs in the same
process and loop: what a service that embeds asyncbackup sees of it. The machine's own stalls
are measured the same way with nothing running (``idle``), in the same rounds. Python's full
garbage collections (generation 2) hold the GIL whatever thread brings them on, so their pauses
are recorded too.

- Parsing a MANIFEST of ``--entries`` files: in bounded worker-thread trips as asyncbackup reads
  one (``manifest_reader.read_manifest``), then also the parent's table a backup builds from it
  (``Parent.of``), against one worker-thread call of the same parse and one ``json.loads`` of
  the whole document.
- Whole backups, embedded (``BackupEngine`` on a local store): a first backup of ``--files``
  small files, then an unchanged one (the parent path).

Each round runs every kind once, in turn; the tables give medians and each round's worst.

    python -m benchmarks.loop_stall [--entries 100000] [--files 20000] [--rounds 3] [--freeze]

``--freeze`` calls ``gc.freeze()`` before anything runs, as a service may once it has started.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

# What a backup process has imported: the collector's full collections walk all of it.
import asyncbackup.cli.run
import asyncbackup.storage.gcs
import asyncbackup.storage.s3  # noqa: F401
from asyncbackup import BackupEngine
from asyncbackup.backup_options import ChangeDetection
from asyncbackup.manifest import FileEntry, Manifest
from asyncbackup.manifest_reader import read_manifest
from asyncbackup.parent import Parent
from asyncbackup.storage.local import LocalStorage
from benchmarks.report import RESULTS, command, machine, save

MiB = 1024 * 1024
Work = Callable[[], Awaitable[Any]]
PARSE_LABELS = (
    ("idle", "nothing (the machine's own stalls: the probe alone)"),
    ("pieces", "bounded worker-thread trips (asyncbackup)"),
    ("parent", "the same, then the parent's table of files (a backup's start)"),
    ("one_thread_call", "the same parse in one worker-thread call"),
    ("one_json_loads", "one json.loads of the whole, in a thread"),
)
BACKUP_LABELS = (
    ("idle", "nothing (the machine's own stalls: the probe alone)"),
    ("first", "a first backup, embedded"),
    ("unchanged", "the same tree again: every file unchanged since the parent"),
)


class Probe:
    """Runs work beside a task that sleeps 1 ms at a time, and says how late it woke."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._gc_started) * 1000)

    def run(self, work: Work) -> dict[str, float]:
        gc.collect()  # with --freeze: what is left since the freeze
        gc.callbacks.append(self.on_gc)
        try:
            return asyncio.run(self._run(work))
        finally:
            gc.callbacks.remove(self.on_gc)

    async def _run(self, work: Work) -> dict[str, float]:
        stalls: list[float] = []
        done = False

        async def tick() -> None:
            while not done:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                stalls.append(time.perf_counter() - before - 0.001)

        self.pauses.clear()
        ticker = asyncio.create_task(tick())
        started, cpu = time.perf_counter(), time.process_time()
        # Kept until the probe stops: freeing 100,000 entries is one C call, whichever thread
        # drops the last reference, and it is not the work measured.
        result = await work()
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        done = True
        await ticker
        del result
        stalls.sort()
        return {
            "worst_stall_ms": round(stalls[-1] * 1000, 1),
            "p99_stall_ms": round(stalls[int(len(stalls) * 0.99)] * 1000, 1),
            "seconds": round(took, 2),
            "cpu_seconds": round(cpu, 2),
            "gc_full_collections": len(self.pauses),
            "gc_longest_ms": round(max(self.pauses, default=0.0), 1),
        }


def interleaved(kinds: Mapping[str, Work], rounds: int) -> dict[str, Any]:
    """Each kind once per round, in turn; the median of each measure, and each round's worst."""
    probe = Probe()
    rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, work in kinds.items():
            rows[kind].append(probe.run(work))
    out: dict[str, Any] = {}
    for kind, found in rows.items():
        row: dict[str, Any] = {k: statistics.median(r[k] for r in found) for k in found[0]}
        row["worst_stall_ms_rounds"] = [r["worst_stall_ms"] for r in found]
        out[kind] = row
    return out


def parse_stalls(entries: int, rounds: int) -> dict[str, Any]:
    """The stalls of parsing a MANIFEST of ``entries`` files, each way (see the docstring)."""
    rnd = random.Random(3)
    manifest = Manifest(
        name="m", job_id="j", started="s", finished="f", host="h", source="/s",
        chunk_size=8 * MiB,
        entries=tuple(
            FileEntry(f"d{i // 1000}/f{i}", "file", 0o644, i, size=100, sha256=h, chunks=(h,),
                      ctime_ns=i, inode=i, uid=0, gid=0)
            for i in range(entries) for h in [rnd.randbytes(32).hex()]
        ),
    )  # fmt: skip
    stored = manifest.to_bytes()
    plain = manifest.to_json()
    del manifest
    took: list[float] = [1.0]

    async def pieces() -> Manifest:
        started = time.perf_counter()
        parsed = await read_manifest(stored, where="bench")
        took.append(time.perf_counter() - started)
        return parsed

    async def parent() -> Parent:  # what a backup does with its parent before it walks
        return await Parent.of(await read_manifest(stored, where="bench"), ChangeDetection())

    async def idle() -> None:  # as long as the last parse in pieces
        await asyncio.sleep(took[-1])

    kinds: dict[str, Work] = {
        "pieces": pieces,
        "parent": parent,
        "idle": idle,
        "one_thread_call": lambda: asyncio.to_thread(Manifest.from_json, stored, where="bench"),
        "one_json_loads": lambda: asyncio.to_thread(json.loads, plain),
    }
    return {
        "entries": entries,
        "rounds": rounds,
        "manifest_mib": round(len(plain) / MiB, 1),
        "stored_mib": round(len(stored) / MiB, 1),
        **interleaved(kinds, rounds),
    }


def backup_stalls(files: int, rounds: int) -> dict[str, Any]:
    """The stalls of a first and an unchanged backup of ``files`` small files, embedded."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-loop-stall-"))
    source = scratch / "source"
    for i in range(files):
        folder = source / f"d{i // 500:03}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_bytes(b"%d\n" % i * 20)
    took: list[float] = [1.0]
    store: list[Path] = []

    async def first() -> None:
        store.append(scratch / f"store{len(store)}")
        started = time.perf_counter()
        await BackupEngine(LocalStorage(store[-1])).backup(source, name="first")
        took.append(time.perf_counter() - started)

    async def unchanged() -> None:
        await BackupEngine(LocalStorage(store[-1])).backup(source, name="unchanged")

    async def idle() -> None:
        await asyncio.sleep(took[-1])

    try:
        kinds: dict[str, Work] = {"first": first, "unchanged": unchanged, "idle": idle}
        return {"files": files, "rounds": rounds, **interleaved(kinds, rounds)}
    finally:
        shutil.rmtree(scratch)


def table(rows: dict[str, Any], labels: tuple[tuple[str, str], ...], what: str) -> list[str]:
    out = [f"| {what} | worst event-loop stall (each round) | 99th percentile "
           "| longest full GC pause (count) | time |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for key, label in labels:
        row = rows[key]
        out.append(f"| {label} | {row['worst_stall_ms']} ms {row['worst_stall_ms_rounds']} "
                   f"| {row['p99_stall_ms']} ms | {row['gc_longest_ms']} ms "
                   f"({row['gc_full_collections']}) | {row['seconds']} s |")  # fmt: skip
    return out


def parse_table(stall: dict[str, Any]) -> list[str]:
    return [
        f"Parsing a MANIFEST of {stall['entries']} entries ({stall['manifest_mib']} MiB of "
        f"JSON, {stall['stored_mib']} MiB stored), medians of {stall['rounds']} interleaved "
        "rounds:",
        "",
        *table(stall, PARSE_LABELS, "parse"),
    ]


def backup_table(stall: dict[str, Any]) -> list[str]:
    return [
        f"Backups of {stall['files']} small files, embedded, into a local store, medians of "
        f"{stall['rounds']} interleaved rounds:",
        "",
        *table(stall, BACKUP_LABELS, "backup"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000, help="the MANIFEST parsed")
    parser.add_argument("--files", type=int, default=20_000, help="the tree backed up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "loop-stall")
    parser.add_argument(
        "--freeze", action="store_true", help="gc.freeze() first, as a service may once started"
    )
    args = parser.parse_args()
    if args.freeze:  # the imported modules' objects leave every later collection
        gc.freeze()
    parse = parse_stalls(args.entries, args.rounds)
    backup = backup_stalls(args.files, args.rounds)
    markdown = "\n".join([*parse_table(parse), "", *backup_table(backup)])
    print(markdown)
    result = {
        "command": command("benchmarks.loop_stall", sys.argv[1:]),
        "machine": machine(),
        "parse": parse,
        "backup": backup,
    }
    save(args.out, "loop-stall", result, markdown)


if __name__ == "__main__":
    main()
