"""What concurrency buys against a slow store: the engine at concurrency 1 and 64, side by side.

A store wrapped in ``FaultyStorage(latency=...)`` so every store operation costs that much more;
a seeded tree of incompressible, distinct files; each backup goes into a fresh empty store, so
every chunk is uploaded, then is restored into a fresh empty directory. The contenders run in
alternation (A B A B ...) on the same data, over two stores: ``memory``, where the added latency
is all a request costs (a remote store, emulated), and ``local``, where each chunk is also
written, fsynced and renamed on this machine's disk.

    python -m benchmarks.latency [--files N] [--size BYTES] [--latency-ms MS] [--rounds N]
                                 [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncbackup import BackupEngine, EngineConfig, FaultyStorage, LocalStorage, MemoryStorage
from asyncbackup.config import DEFAULT_CHUNK_SIZE
from asyncbackup.storage import Storage
from benchmarks.report import RESULTS, command, machine, save, side_by_side

CONCURRENCY = (1, 64)  # of each contender; the first is the sequential baseline
STORES = ("memory", "local")
# Store requests no concurrency overlaps: a backup's two listings and its commit; a restore's
# read of the MANIFEST.
SEQUENTIAL_OPS = {"backup": 3, "restore": 1}
MiB = 1024 * 1024


def make_tree(root: Path, *, files: int, size: int, seed: int = 2024) -> None:
    """Write ``files`` files of ``size`` seeded random bytes: incompressible, and all distinct."""
    rng = random.Random(seed)
    for i in range(files):
        (root / f"f{i:05d}.bin").write_bytes(rng.randbytes(size))


async def backup_and_restore(
    source: Path, scratch: Path, *, kind: str, concurrency: int, latency: float
) -> list[dict[str, Any]]:
    """Back up ``source`` into an empty store, then restore it; time both."""
    config = EngineConfig(concurrency=concurrency)
    inner: Storage = MemoryStorage() if kind == "memory" else LocalStorage(scratch / "store")
    runs = []
    async with FaultyStorage(inner, latency=latency) as store:
        engine = BackupEngine(store, config)
        wall, cpu = time.perf_counter(), time.process_time()
        backup = await engine.backup(source, name=f"bench-c{concurrency}")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"op": "backup", "wall_s": wall, "cpu_s": cpu, "files": backup.files,
                     "chunks": backup.chunks_uploaded, "retries": backup.retries})  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        restore = await engine.restore(backup.name, scratch / "restored")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        runs.append({"op": "restore", "wall_s": wall, "cpu_s": cpu, "files": restore.files,
                     "chunks": restore.chunks_downloaded, "retries": restore.retries})  # fmt: skip
    return [{"store": kind, "concurrency": concurrency, **run} for run in runs]


def floor_seconds(op: str, chunks: int, concurrency: int, latency: float) -> float:
    """The least time the added latency allows: sequential operations, then full waves of PUTs."""
    return (SEQUENTIAL_OPS[op] + math.ceil(chunks / concurrency)) * latency


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace, chunks: int) -> dict[str, Any]:
    mib = args.files * args.size / MiB

    def extra(match: dict[str, Any], wall: float) -> dict[str, float]:
        floor = floor_seconds(match["op"], chunks, match["concurrency"], args.latency_ms / 1000)
        return {"files_per_s": args.files / wall, "mib_per_s": mib / wall, "floor_s": floor}

    return side_by_side(runs, STORES, CONCURRENCY, extra)


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"{p['files']} files x {p['size']} bytes, {p['latency_ms']} ms added to every store "
        f"operation, median of {p['rounds']} rounds ({result['machine']['nproc']} CPUs):",
        "",
        "| operation | store | concurrency | wall (s) | floor (s) | files/s | MiB/s | CPU (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, m in result["medians"].items():
        op, kind, c = key.replace(" c=", " ").split()
        lines.append(
            f"| {op} | {kind} | {c} | {m['wall_s']:.2f} | {m['floor_s']:.2f} "
            f"| {m['files_per_s']:.0f} | {m['mib_per_s']:.1f} | {m['cpu_s']:.2f} |"
        )
    lines.append("")
    for what, ratio in result["speedup"].items():
        op, kind = what.split()
        lines.append(f"Speed-up c=1 / c=64, {op} on the {kind} store: **{ratio:.1f}x** (ideal 64).")
    lines += [
        "Floor: (sequential requests, 3 for a backup and 1 for a restore, + ceil(chunks / "
        "concurrency) waves of chunk requests) x latency; disk, hashing and CPU come on top.",
    ]
    return "\n".join(lines)


def run_rounds(args: argparse.Namespace, chunks: int) -> list[dict[str, Any]]:
    """Run every contender once per round, in alternation, each into a fresh empty store.

    The tree is written before any event loop starts, so no blocking call runs inside one.
    """
    runs: list[dict[str, Any]] = []
    latency = args.latency_ms / 1000
    with tempfile.TemporaryDirectory(prefix="asyncbackup-bench-") as tmp:
        source = Path(tmp, "source")
        source.mkdir()
        make_tree(source, files=args.files, size=args.size)
        for round_ in range(1, args.rounds + 1):
            for kind in STORES:
                for c in CONCURRENCY:
                    scratch = Path(tmp, f"r{round_}-{kind}-c{c}")
                    pair = asyncio.run(
                        backup_and_restore(
                            source, scratch, kind=kind, concurrency=c, latency=latency
                        )
                    )
                    for run in pair:
                        if run["files"] != args.files or run["chunks"] != chunks:
                            sys.exit(f"{run}: expected {args.files} files, {chunks} chunks")
                        runs.append({"round": round_, **run})
                        print(f"round {round_} {run['op']} {kind} c={c}: {run['wall_s']:.2f} s",
                              file=sys.stderr)  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__)
    parser.add_argument("--files", type=int, default=2000, help="files in the source tree")
    parser.add_argument("--size", type=int, default=65536, help="bytes per file")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per store operation")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.files < 1 or args.size < 1 or args.rounds < 1 or args.latency_ms < 0:
        parser.error("--files, --size and --rounds must be positive, --latency-ms not negative")
    chunks = args.files * math.ceil(args.size / DEFAULT_CHUNK_SIZE)
    runs = run_rounds(args, chunks)
    result = {
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "command": command("benchmarks.latency", argv),
        "machine": machine(),
        "runs": runs,
        **summarize(runs, args, chunks),
    }
    table = markdown(result)
    print(table)
    save(args.out, "latency", result, table)


if __name__ == "__main__":
    main()
