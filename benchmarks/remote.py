"""What concurrency buys on real S3 and GCS servers: the engine at concurrency 1 and 16.

moto (S3) and fake-gcs-server (GCS) run on 127.0.0.1, started here and stopped by PID. The tree
holds many small files and one large multi-chunk file; each backup goes into a fresh bucket, so
every chunk is uploaded, then is restored into an empty directory and compared. The contenders
run in alternation (A B A B ...). Both servers share this machine's 2 CPUs with the engine, and
moto is single-threaded, so these ratios are a floor for what a real remote store gives.

    python -m benchmarks.remote [--files N] [--size BYTES] [--large-mib N] [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncbackup import BackupEngine, EngineConfig, StoreOptions, open_storage
from benchmarks.latency import make_tree
from benchmarks.report import RESULTS, command, machine, median_of, save, side_by_side
from tests.servers import Server, http, start_fake_gcs, start_moto

CONCURRENCY = (1, 16)
STORES = ("s3", "gcs")
MiB = 1024 * 1024


@contextmanager
def servers() -> Iterator[dict[str, Server]]:
    """moto and fake-gcs-server, with what the SDKs need in the environment."""
    moto, gcs = start_moto(), start_fake_gcs()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto.url,
        STORAGE_EMULATOR_HOST=gcs.url,
    )
    try:
        yield {"s3": moto, "gcs": gcs}
    finally:
        moto.stop()
        gcs.stop()


def fresh_bucket(kind: str, server: Server, name: str) -> str:
    if kind == "s3":
        http("PUT", f"{server.url}/{name}")
        return f"s3://{name}/bench"
    http("POST", f"{server.url}/storage/v1/b?project=bench", json.dumps({"name": name}).encode())
    return f"gs://{name}/bench"


async def backup_and_restore(
    source: Path, target: Path, url: str, concurrency: int
) -> list[dict[str, Any]]:
    runs = []
    async with open_storage(url, StoreOptions(max_connections=max(concurrency, 16))) as store:
        engine = BackupEngine(store, EngineConfig(concurrency=concurrency))
        wall, cpu = time.perf_counter(), time.process_time()
        backup = await engine.backup(source, name="bench")
        runs.append({"op": "backup", "wall_s": time.perf_counter() - wall,
                     "cpu_s": time.process_time() - cpu, "bytes": backup.bytes,
                     "chunks": backup.chunks_uploaded, "retries": backup.retries})  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        restore = await engine.restore("bench", target)
        runs.append({"op": "restore", "wall_s": time.perf_counter() - wall,
                     "cpu_s": time.process_time() - cpu, "bytes": restore.bytes,
                     "chunks": restore.chunks_downloaded, "retries": restore.retries})  # fmt: skip
    return runs


def same_tree(a: Path, b: Path) -> bool:
    compared = filecmp.dircmp(a, b)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, compared.common_files, shallow=False)
    return not mismatch and not errors


def run_rounds(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asyncbackup-remote-") as tmp, servers() as running:
        source = Path(tmp, "source")
        (source / "small").mkdir(parents=True)
        make_tree(source / "small", files=args.files, size=args.size)
        (source / "large.bin").write_bytes(os.urandom(args.large_mib * MiB))
        for round_ in range(1, args.rounds + 1):
            for kind in STORES:
                for c in CONCURRENCY:
                    label = f"r{round_}-{kind}-c{c}"
                    url = fresh_bucket(kind, running[kind], f"bench-{label}")
                    target = Path(tmp, label)
                    pair = asyncio.run(backup_and_restore(source, target, url, c))
                    if not same_tree(source / "small", target / "small") or not filecmp.cmp(
                        source / "large.bin", target / "large.bin", shallow=False
                    ):
                        sys.exit(f"{label}: the restored tree differs from the source")
                    for run in pair:
                        runs.append({"round": round_, "store": kind, "concurrency": c, **run})
                        print(f"{label} {run['op']}: {run['wall_s']:.2f} s", file=sys.stderr)
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def extra(match: dict[str, Any], wall: float) -> dict[str, float]:
        mib = median_of(runs, "bytes", **match) / MiB
        return {"mib_per_s": mib / wall, "chunks": median_of(runs, "chunks", **match)}

    return side_by_side(runs, STORES, CONCURRENCY, extra)


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"{p['files']} files x {p['size']} bytes + one {p['large_mib']} MiB file, median of "
        f"{p['rounds']} rounds ({result['machine']['nproc']} CPUs shared with the server):",
        "",
        "| operation | store | concurrency | chunks | wall (s) | MiB/s | client CPU (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, m in result["medians"].items():
        op, kind, c = key.replace(" c=", " ").split()
        lines.append(
            f"| {op} | {kind} | {c} | {m['chunks']:.0f} | {m['wall_s']:.2f} "
            f"| {m['mib_per_s']:.1f} | {m['cpu_s']:.2f} |"
        )
    lines.append("")
    for what, ratio in result["speedup"].items():
        op, kind = what.split()
        lines.append(f"Speed-up c=1 / c=16, {op} on {kind}: **{ratio:.1f}x**.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__)
    parser.add_argument("--files", type=int, default=500, help="small files in the tree")
    parser.add_argument("--size", type=int, default=65536, help="bytes per small file")
    parser.add_argument("--large-mib", type=int, default=64, help="size of the large file")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.files < 1 or args.size < 1 or args.large_mib < 1 or args.rounds < 1:
        parser.error("--files, --size, --large-mib and --rounds must be positive")
    runs = run_rounds(args)
    result = {
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "command": command("benchmarks.remote", argv),
        "machine": machine(),
        "runs": runs,
        **summarize(runs),
    }
    table = markdown(result)
    print(table)
    save(args.out, "remote", result, table)


if __name__ == "__main__":
    main()
