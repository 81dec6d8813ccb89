"""Does --bwlimit hold? The CLI backs up and restores a 40 MiB tree with and without a limit, on
the local store and on S3 (moto on 127.0.0.1), and the achieved rate is compared with the cap.

The job's own time is read from ``backup_duration_seconds`` in ``--metrics-file`` (interpreter
start-up is not the limiter's doing); the rate is the bytes the job moved over that time. With a
cap of R bytes/s and a burst of R/4, a job that moves B bytes cannot end before (B - R/4) / R
seconds: that is the ``floor`` column.

    python -m benchmarks.bwlimit [--limits 10M,20M] [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncbackup.bandwidth import DEFAULT_BURST_SECONDS, parse_rate
from benchmarks.report import RESULTS, command, machine, median_of, save
from tests.servers import http, start_moto

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


def make_source(root: Path) -> int:
    """One 24 MiB file (three 8 MiB chunks) and 256 files of 64 KiB: 40 MiB, all distinct."""
    (root / "small").mkdir(parents=True)
    (root / "large.bin").write_bytes(os.urandom(24 * MiB))
    for i in range(256):
        (root / "small" / f"f{i:03d}").write_bytes(os.urandom(64 * 1024))
    return 40 * MiB


def run_cli(*args: str) -> tuple[float, float, str]:
    """Run the CLI; returns its wall time, the job's own duration, and stderr."""
    with tempfile.NamedTemporaryFile(suffix=".prom") as prom:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "asyncbackup", *args, "--metrics-file", prom.name],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"asyncbackup {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        text = Path(prom.name).read_text()
    match = re.search(r"^backup_duration_seconds\{[^}]*\} (\S+)$", text, re.M)
    assert match, text
    return wall, float(match.group(1)), done.stderr


def one_case(tmp: str, source: Path, url: str, label: str, limit: str) -> list[dict[str, Any]]:
    """A backup into ``url`` and a restore from it, both at ``limit``."""
    cap = [] if limit == "none" else ["--bwlimit", limit]
    out = []
    for op, argv in (
        ("backup", ["backup", str(source), url, "--name", "b", *cap]),
        ("restore", ["restore", url, "b", str(Path(tmp, f"{label}-out")), *cap]),
    ):
        wall, seconds, _ = run_cli(*argv)
        out.append({"op": op, "wall_s": wall, "job_s": seconds})
        print(f"{label} {op}: job {seconds:.2f} s, {40 / seconds:.1f} MiB/s", file=sys.stderr)
    return out


def run_rounds(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    moto = start_moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto.url,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="asyncbackup-bwlimit-") as tmp:
            source = Path(tmp, "source")
            nbytes = make_source(source)
            for round_ in range(1, args.rounds + 1):
                for store in ("local", "s3"):
                    for limit in ["none", *args.limits]:
                        label = f"r{round_}-{store}-{limit}".lower()
                        url = str(Path(tmp, label))
                        if store == "s3":
                            http("PUT", f"{moto.url}/bw-{label}")
                            url = f"s3://bw-{label}/bench"
                        for run in one_case(tmp, source, url, label, limit):
                            case = {"round": round_, "store": store, "limit": limit}
                            runs.append({**case, **run, "bytes": nbytes})
    finally:
        moto.stop()
    return runs


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [
        f"40 MiB (one 24 MiB file, 256 x 64 KiB), median of {result['params']['rounds']} "
        f"rounds, job time from backup_duration_seconds ({result['machine']['nproc']} CPUs). "
        "`floor` is the shortest time the cap allows, (40 MiB - burst) / cap; `paced` is the rate "
        "past the bucket's first quarter second, (40 MiB - burst) / job time, as a share of the "
        "cap: at most 100% if the cap holds.",
        "",
        "| operation | store | --bwlimit | job (s) | floor (s) | MiB/s | paced, of the cap |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for op in ("backup", "restore"):
        for store in ("local", "s3"):
            for limit in ["none", *result["params"]["limits"]]:
                job = median_of(runs, "job_s", op=op, store=store, limit=limit)
                if limit == "none":
                    lines.append(f"| {op} | {store} | none | {job:.2f} | | {40 / job:.1f} | |")
                    continue
                rate = parse_rate(limit) / MiB
                burst = rate * DEFAULT_BURST_SECONDS
                floor = (40 - burst) / rate
                paced = (40 - burst) / job / rate
                lines.append(
                    f"| {op} | {store} | {limit} | {job:.2f} | {floor:.2f} | {40 / job:.1f} "
                    f"| {paced:.0%} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bwlimit", description=__doc__)
    parser.add_argument("--limits", default="10M,20M", help="caps to try, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.limits = [limit.strip() for limit in args.limits.split(",") if limit.strip()]
    for limit in args.limits:
        parse_rate(limit)  # refuse a bad one before a minute of runs
    if args.rounds < 1:
        parser.error("--rounds must be positive")
    runs = run_rounds(args)
    result = {
        "params": {"limits": args.limits, "rounds": args.rounds},
        "command": command("benchmarks.bwlimit", argv),
        "machine": machine(),
        "runs": runs,
    }
    table = markdown(result)
    print(table)
    save(args.out, "bwlimit", result, table)


if __name__ == "__main__":
    main()
