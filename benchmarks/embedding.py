"""A service's own ``asyncio.to_thread`` calls while an embedded backup runs, interleaved.

    python -m benchmarks.embedding [--rounds 5] [--files 300] [--file-kib 128]

Each round backs up the same generated tree into a fresh local store twice, in turn: once with
the engine's thread calls on the loop's default executor (what the engine did before issue 18:
``executor=`` the loop's default pool), once on the engine's own pool (the default now). Beside
each backup, a "service" task calls ``asyncio.to_thread`` on a no-op every 5 ms and records how
long each call waited. Medians over the rounds of each backup's p50, p99 and worst wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asyncbackup import BackupEngine, EngineConfig, LocalStorage
from benchmarks.report import RESULTS, command, machine, save

CONTENDERS = ("loop's default pool (before)", "engine's own pool (now)")


def make_tree(root: Path, files: int, size: int) -> None:
    rnd = random.Random(1)
    for i in range(files):
        directory = root / f"d{i % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:04d}.bin").write_bytes(rnd.randbytes(size))


async def probe(stop: asyncio.Event, waits: list[float]) -> None:
    """The service: a no-op in a worker thread every 5 ms, timed."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.to_thread(lambda: None)
        waits.append(time.perf_counter() - started)
        await asyncio.sleep(0.005)


async def one_backup(source: Path, store: Path, *, shared_default: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(min(32, (os.cpu_count() or 1) + 4))  # asyncio's own sizing
    loop.set_default_executor(default)
    engine = BackupEngine(
        LocalStorage(store),
        EngineConfig(concurrency=16, chunk_size=64 * 1024),
        executor=default if shared_default else None,
    )
    waits: list[float] = []
    stop = asyncio.Event()
    service = asyncio.create_task(probe(stop, waits))
    started = time.perf_counter()
    await engine.backup(source, name="b")
    seconds = time.perf_counter() - started
    stop.set()
    await service
    waits.sort()
    return {
        "backup_s": seconds,
        "calls": len(waits),
        "p50_ms": 1000 * waits[len(waits) // 2],
        "p99_ms": 1000 * waits[min(len(waits) - 1, int(len(waits) * 0.99))],
        "max_ms": 1000 * waits[-1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedding", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--file-kib", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="asyncbackup-embedding-"))
    runs: list[dict[str, Any]] = []
    try:
        make_tree(work / "source", args.files, args.file_kib * 1024)
        for round_ in range(args.rounds):
            for name in CONTENDERS:
                store = work / "store"
                shutil.rmtree(store, ignore_errors=True)
                row = asyncio.run(
                    one_backup(work / "source", store, shared_default=name == CONTENDERS[0])
                )
                runs.append({"name": name, "round": round_, **row})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, field: str) -> float:
        return float(statistics.median(r[field] for r in runs if r["name"] == name))

    mib = args.files * args.file_kib / 1024
    lines = [
        f"| engine's threads (median of {args.rounds} rounds, interleaved; {args.files} files, "
        f"{mib:.1f} MiB) | service to_thread p50 ms | p99 ms | worst ms | backup s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        cells = " | ".join(f"{median(name, f):.2f}" for f in ("p50_ms", "p99_ms", "max_ms"))
        lines.append(f"| {name} | {cells} | {median(name, 'backup_s'):.2f} |")
    before, now = CONTENDERS
    ratios = " | ".join(
        f"{median(before, f) / max(median(now, f), 1e-9):.1f}x"
        for f in ("p50_ms", "p99_ms", "max_ms")
    )
    speed = median(before, "backup_s") / median(now, "backup_s")
    lines.append(f"| before / now | {ratios} | {speed:.2f}x |")
    table = "\n".join(lines)
    print(table)
    result = {"command": command("benchmarks.embedding", argv), "machine": machine(), "runs": runs}
    save(args.out, "embedding", result, table)


if __name__ == "__main__":
    main()
