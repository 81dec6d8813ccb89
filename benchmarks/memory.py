"""Peak memory of a backup and a restore against their stated bound: the baseline plus the file
data a job may hold, which is the byte budget (``--buffer-budget``, 128 MiB by default) plus the
one chunk in hand, or ``(2 x concurrency + 1) x chunk_size`` if that is less (the task pool's
cap, in chunks).

Each job runs the CLI in its own process, against a local store slowed by injected latency
(40 ms x concurrency per request, so uploads are slower than reading and hashing, and read-ahead
fills every buffer it is allowed); the peak RSS comes from ``os.wait4``. The baseline is a backup
of an empty directory: the interpreter, the libraries and the event loop. The same runs go
over S3 (moto on 127.0.0.1) for a backup and a restore, against the S3 baseline (aiobotocore's
imports and client).

    python -m benchmarks.memory [--big-mib 512] [--small-files 100000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from asyncbackup.config import DEFAULT_BUFFER_BUDGET
from benchmarks.report import RESULTS, command, machine, save
from tests.servers import http, start_moto

MiB = 1024 * 1024
CHUNK = 8 * MiB
LEVELS = (1, 4, 16, 64)


def data_bound_mib(concurrency: int) -> float:
    """File data a job may hold: the budget and the chunk in hand, or the pool's cap."""
    return min((2 * concurrency + 1) * CHUNK, DEFAULT_BUFFER_BUDGET + CHUNK) / MiB


def peak_rss_mib(argv: list[str]) -> float:
    """Run ``argv`` and return its peak resident set size in MiB (Linux reports KiB)."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv} exited {process.returncode}")
    return usage.ru_maxrss / 1024


def backup(source: Path, store: Path | str, *, concurrency: int, latency_ms: int) -> list[str]:
    return [
        sys.executable, "-m", "asyncbackup", "backup", str(source), str(store), "-q",
        "--name", "bench",
        "--concurrency", str(concurrency), "--inject-latency", str(latency_ms),
    ]  # fmt: skip


def restore(store: str, target: Path, *, concurrency: int, latency_ms: int) -> list[str]:
    return [
        sys.executable, "-m", "asyncbackup", "restore", store, "bench", str(target), "-q",
        "--concurrency", str(concurrency), "--inject-latency", str(latency_ms),
    ]  # fmt: skip


def s3_rows(big: Path, big_mib: int, empty: Path, scratch: Path) -> list[dict[str, Any]]:
    """The same bound over S3 (moto), for a backup and for a restore: the SDK's buffers count."""
    moto = start_moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto.url,
    )
    rows: list[dict[str, Any]] = []
    try:
        http("PUT", f"{moto.url}/idle")
        idle = peak_rss_mib(backup(empty, "s3://idle/x", concurrency=1, latency_ms=0))
        rows.append(
            {"run": "S3: empty directory", "peak_rss_mib": round(idle, 1), "bound_mib": None}
        )
        for concurrency in LEVELS:
            latency = 40 * concurrency
            bound = round(idle + data_bound_mib(concurrency), 1)
            http("POST", f"{moto.url}/moto-api/reset")  # frees the last run's objects
            http("PUT", f"{moto.url}/big")
            store = "s3://big/x"
            for op, argv in (
                ("backup", backup(big, store, concurrency=concurrency, latency_ms=latency)),
                ("restore", restore(store, scratch / f"restored-{concurrency}",
                                    concurrency=concurrency, latency_ms=latency)),
            ):  # fmt: skip
                peak = peak_rss_mib(argv)
                what = f"S3: {op} of one {big_mib} MiB file"
                rows.append(
                    {
                        "run": f"{what}, concurrency {concurrency}, {latency} ms",
                        "peak_rss_mib": round(peak, 1),
                        "bound_mib": bound,
                    }
                )
    finally:
        moto.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-mib", type=int, default=512, help="size of the one large file")
    parser.add_argument("--small-files", type=int, default=100_000, help="count of 4 KiB files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        big, small = root / "big", root / "small"
        big.mkdir()
        with open(big / "file.bin", "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(MiB))
        for i in range(args.small_files):
            folder = small / f"d{i // 1000}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i}").write_bytes(os.urandom(4096))

        (root / "empty").mkdir()
        idle = peak_rss_mib(backup(root / "empty", root / "store-0", concurrency=1, latency_ms=0))
        rows.append({"run": "empty directory", "peak_rss_mib": round(idle, 1), "bound_mib": None})
        for concurrency in LEVELS:
            latency = 40 * concurrency
            store = root / f"store-big-{concurrency}"
            peak = peak_rss_mib(backup(big, store, concurrency=concurrency, latency_ms=latency))
            rows.append(
                {
                    "run": f"one {args.big_mib} MiB file, concurrency {concurrency}, {latency} ms",
                    "peak_rss_mib": round(peak, 1),
                    "bound_mib": round(idle + data_bound_mib(concurrency), 1),
                }
            )
        peak = peak_rss_mib(backup(small, root / "store-small", concurrency=64, latency_ms=5))
        rows.append(
            {
                "run": f"{args.small_files} files of 4 KiB, concurrency 64, 5 ms latency",
                "peak_rss_mib": round(peak, 1),
                "bound_mib": None,
            }
        )
        rows += s3_rows(big, args.big_mib, root / "empty", root)

    table = [
        "| run | peak RSS (MiB) | bound: baseline + min((2c + 1) x 8, 128 + 8) MiB |",
        "|---|---:|---:|",
    ]
    for row in rows:
        bound = "" if row["bound_mib"] is None else str(row["bound_mib"])
        table.append(f"| {row['run']} | {row['peak_rss_mib']} | {bound} |")
    markdown = "\n".join(table)
    print(markdown)
    result = {"command": command("benchmarks.memory", sys.argv[1:]), "machine": machine()}
    save(args.out, "memory", {**result, "runs": rows}, markdown)


if __name__ == "__main__":
    main()
