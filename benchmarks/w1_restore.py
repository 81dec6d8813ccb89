"""W1 restore beside s5cmd: 2,000 files of 64 KiB downloaded through the 25 ms delay line.

``python -m benchmarks.w1_restore --rounds 3``. One ``rclone serve s3`` (memory backend,
signatures checked) holds both copies of W1: asyncbackup's backup (packed, the default; and one
object per file, ``--pack-threshold 0``, for the sequential-style layout) and s5cmd's plain
upload. Then, round after round in rotated order, each contender restores into an empty
directory through the delay line: asyncbackup ``restore`` (packed backup, c=64), asyncbackup
``restore`` of the unpacked backup (c=64), and ``s5cmd cp`` of the plain copy (its default 256
workers, as the suite runs it). Each is a subprocess of the spawner (its own CPU seconds and
peak RSS); the delay line counts the requests. Every restore is compared, file by file, with the
source. Results in ``benchmarks/results/w1-restore.{json,md}``.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.contenders import PEER_CONCURRENCY, _site_binary, peers_missing
from benchmarks.delayline import DelayLine
from benchmarks.run import ENV
from benchmarks.spawner import Spawner
from benchmarks.stores import BUCKET, start_server
from benchmarks.workloads import FULL, make_tree

RESULTS = Path(__file__).resolve().parent / "results"
S3 = ["--endpoint-url", "{endpoint}", "--addressing-style", "path"]


def _asyncbackup(*args: str) -> list[str]:
    return [sys.executable, "-m", "asyncbackup", *args]


def _same(a: Path, b: Path) -> bool:
    for left in a.rglob("*"):
        if left.is_file():
            right = b / left.relative_to(a)
            if not right.is_file() or not filecmp.cmp(left, right, shallow=False):
                return False
    return sum(1 for p in b.rglob("*") if p.is_file()) == sum(
        1 for p in a.rglob("*") if p.is_file()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=25.0)
    args = parser.parse_args(argv)
    if missing := peers_missing():
        sys.exit(f"peer tools missing ({', '.join(missing)}): run `make bench-tools`")
    s5cmd = str(_site_binary("s5cmd", "s5cmd"))
    w1 = next(w for w in FULL if w.name == "W1")
    spawner = Spawner()
    server = start_server("s3")
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="w1-restore-") as tmp:
            source = Path(tmp, "source")
            make_tree(source, w1)
            env = {**os.environ, **ENV}
            direct = [a.replace("{endpoint}", server.url) for a in S3]
            url = f"s3://{BUCKET}/ab"
            for name, extra in (("packed", []), ("unpacked", ["--pack-threshold", "0"])):
                done = spawner.run(
                    _asyncbackup("backup", str(source), f"{url}-{name}", "--name", "w1", "-q",
                                 "--concurrency", "64", *direct, *extra),
                    env, timeout=600,
                )  # fmt: skip
                assert done["exit_code"] == 0, done
            upload = [s5cmd, "--endpoint-url", server.url, "--log", "error", "cp",
                      f"{source}/*", f"s3://{BUCKET}/plain/"]  # fmt: skip
            assert spawner.run(upload, env, timeout=600)["exit_code"] == 0

            def restore(name: str) -> list[str]:
                return _asyncbackup("restore", f"{url}-{name}", "w1", "{target}", "-q",
                                    "--concurrency", "64", *S3)  # fmt: skip

            contenders = {
                "asyncbackup c=64, packed": restore("packed"),
                "asyncbackup c=64, one object per file": restore("unpacked"),
                "s5cmd": [
                    s5cmd,
                    "--endpoint-url",
                    "{endpoint}",
                    "--numworkers",
                    str(PEER_CONCURRENCY),
                    "--log",
                    "error",
                    "cp",
                    f"s3://{BUCKET}/plain/*",
                    "{target}/",
                ],
            }
            names = list(contenders)
            for round_ in range(args.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    target = Path(tmp, "restored")
                    shutil.rmtree(target, ignore_errors=True)
                    target.mkdir()
                    with DelayLine(server.port, args.latency_ms, 0.0, 0) as line:
                        command = [
                            a.replace("{endpoint}", line.url).replace("{target}", str(target))
                            for a in contenders[name]
                        ]
                        result = spawner.run(command, env, timeout=600)
                    requests = line.stats.get("requests")
                    intact = _same(source, target)
                    result.update(
                        contender=name, round=round_ + 1, requests=requests, intact=intact
                    )
                    print(json.dumps(result), file=sys.stderr, flush=True)
                    runs.append(result)
    finally:
        server.stop()
        spawner.close()
    _report(runs, args)


def _report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "w1-restore.json").write_text(json.dumps(runs, indent=1))
    lines = [
        f"W1 restore (2,000 x 64 KiB) through a {args.latency_ms:g} ms delay line, median of "
        f"{args.rounds} interleaved rounds (`python -m benchmarks.w1_restore --rounds "
        f"{args.rounds}`)",
        "",
        "| contender | wall (s) | client CPU (s) | peak RSS (MiB) | requests | intact runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["contender"], []).append(run)
    for name, group in by.items():
        ok = [r for r in group if r["intact"] and r["exit_code"] == 0]
        if not ok:
            lines.append(f"| {name} | — | — | — | — | 0/{len(group)} |")
            continue
        wall = statistics.median(r["wall_s"] for r in ok)
        cpu = statistics.median(r["client_cpu_s"] for r in ok)
        rss = statistics.median(r["peak_rss_mib"] for r in ok)
        requests = statistics.median(r["requests"] or 0 for r in ok)
        lines.append(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {requests:.0f} | "
            f"{len(ok)}/{len(group)} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "w1-restore.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
