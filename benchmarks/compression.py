"""What per-chunk compression saves and costs, on three generated corpora.

- ``text``: log lines and prose-like words from a seeded vocabulary (what logs and sources are);
- ``compressed``: gzip streams of random-ish records, as archives and media already are;
- ``database``: a real SQLite file (sqlite3, stdlib) with an indexed table of mixed rows.

Each codec backs up each corpus into a fresh ``MemoryStorage`` (so the store costs nothing and the
codec is what is measured), then restores it and checks every byte. The size is what lands in
``chunks/``; the wall time is the median of ``--rounds`` runs, taken in alternation; CPU is the
process's (every worker thread included). The machine is shared, so times move; sizes do not.

    python -m benchmarks.compression [--size-mib N] [--rounds N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import gzip
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from asyncbackup import BackupEngine, Compression, EngineConfig, MemoryStorage

MiB = 1024 * 1024
CODECS: list[Compression] = [
    Compression("none"),
    Compression("gzip", 6),
    Compression("zstd", 1),
    Compression("zstd", 3),
    Compression("zstd", 9),
]
VOCABULARY = (
    "backup restore chunk store manifest retry budget error timeout latency bucket object key "
    "prune policy daily weekly grace sweep mark compress level frame stream digest hash the a "
    "of to in is that for on with as was at by it from be this an which or are"
)
WORDS = VOCABULARY.split()


def text_corpus(path: Path, size: int, rng: random.Random) -> None:
    with open(path, "w") as f:
        written = 0
        n = 0
        while written < size:
            n += 1
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18)))
            line = (
                f"2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:{n % 59:02d}Z INFO {words}\n"
            )
            f.write(line)
            written += len(line)


def compressed_corpus(path: Path, size: int, rng: random.Random) -> None:
    with open(path, "wb") as f:
        while f.tell() < size:
            block = b"".join(rng.randbytes(8) + rng.choice(WORDS).encode() for _ in range(20_000))
            f.write(gzip.compress(block, mtime=0))


def database_corpus(path: Path, size: int, rng: random.Random) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, city TEXT, amount REAL,"
        " created TEXT, status TEXT, note TEXT)"
    )
    db.execute("CREATE INDEX by_customer ON orders (customer)")
    cities = ["Lisbon", "Oslo", "Lyon", "Austin", "Osaka", "Quito", "Perth", "Tunis"]
    statuses = ["new", "paid", "shipped", "returned"]
    row = 0
    while path.stat().st_size < size:
        rows = []
        for _ in range(5000):
            row += 1
            rows.append((
                row, f"customer-{rng.randint(1, 50_000):05d}", rng.choice(cities),
                round(rng.uniform(1, 2000), 2), f"2026-{rng.randint(1, 12):02d}-"
                f"{rng.randint(1, 28):02d}", rng.choice(statuses),
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8))),
            ))  # fmt: skip
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()
    db.close()


CORPORA = {"text": text_corpus, "compressed": compressed_corpus, "database": database_corpus}


def label(c: Compression) -> str:
    return c.codec if c.codec == "none" else f"{c.codec} {c.level}"


def _same_files(source: Path, target: Path) -> bool:
    names = [p.name for p in source.iterdir()]
    return all(filecmp.cmp(source / n, target / n, shallow=False) for n in names)


async def run_once(source: Path, scratch: Path, config: EngineConfig) -> dict[str, float]:
    store = MemoryStorage()
    engine = BackupEngine(store, config)
    wall, cpu = time.perf_counter(), time.process_time()
    summary = await engine.backup(source, name="bench")
    backup_wall, backup_cpu = time.perf_counter() - wall, time.process_time() - cpu
    stored = sum(len(v) for k, v in store.objects.items() if k.startswith("chunks/"))
    target = scratch / f"restored-{time.monotonic_ns()}"
    wall = time.perf_counter()
    await engine.restore("bench", target)
    restore_wall = time.perf_counter() - wall
    same = await asyncio.to_thread(_same_files, source, target)
    if not same:
        raise SystemExit(f"restore of {source} differs: the benchmark is void")
    return {
        "raw": summary.bytes,
        "stored": stored,
        "backup_s": backup_wall,
        "backup_cpu_s": backup_cpu,
        "restore_s": restore_wall,
    }


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=64, help="size of each corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    base = EngineConfig(concurrency=args.concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        scratch = Path(tmp)
        print(f"corpora of {args.size_mib} MiB, chunk size 8 MiB, concurrency "
              f"{args.concurrency}, median of {args.rounds} rounds\n")  # fmt: skip
        print("| corpus | codec | stored (MiB) | ratio | backup (s) | backup MiB/s "
              "| backup CPU (s) | restore (s) | restore MiB/s |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for corpus, make in CORPORA.items():
            source = scratch / corpus
            source.mkdir()
            make(source / f"{corpus}.dat", args.size_mib * MiB, random.Random(corpus))
            runs: dict[str, list[dict[str, float]]] = {label(c): [] for c in CODECS}
            for _ in range(args.rounds):  # in alternation: load on the machine hits all alike
                for c in CODECS:
                    config = replace(base, compression=c)
                    runs[label(c)].append(await run_once(source, scratch, config))
            for name, results in runs.items():
                raw, stored = results[0]["raw"], results[0]["stored"]
                b = statistics.median(r["backup_s"] for r in results)
                cpu = statistics.median(r["backup_cpu_s"] for r in results)
                r = statistics.median(r["restore_s"] for r in results)
                print(
                    f"| {corpus} | {name} | {stored / MiB:.1f} | {raw / stored:.2f} | {b:.2f} "
                    f"| {raw / MiB / b:.0f} | {cpu:.2f} | {r:.2f} | {raw / MiB / r:.0f} |"
                )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
