"""The benchmark suite: asyncbackup against itself as a sequential engine (the baseline of
``contenders.SEQUENTIAL_FLAGS``), at 8 and 64, and against s5cmd, rclone and the AWS CLI, on
the same data and the same servers.

For each workload the tree is written once; every round then runs every contender once, in an
order rotated by one each round (A B C, B C A, ...), each into a fresh server behind the delay
line (``benchmarks.delayline``), and checks every object the server holds afterwards. Runs are
saved per workload as ``runs-W1.json``..., then ``benchmarks.summary`` writes the tables and the
plot from whatever runs are there, so one workload can be re-run alone.

    python -m benchmarks.suite [--quick] [--only W1,W2,W3,W4,overhead,scaling,local] [--rounds N]
                               [--latency-ms 25] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import local, summary
from benchmarks.contenders import (
    Contender,
    all_contenders,
    asyncbackup,
    asyncbackup_before,
    asyncbackup_local,
    peers_missing,
    s5cmd,
)
from benchmarks.report import RESULTS, machine
from benchmarks.run import run_one
from benchmarks.spawner import Spawner
from benchmarks.workloads import FULL, QUICK, SCALING, Expected, Workload, make_tree

PARTS = ("W1", "W2", "W3", "W4", "overhead", "scaling", "local")


def contenders_for(
    workload: Workload, everyone: list[Contender], latency_ms: float
) -> list[Contender]:
    """W1 and W2: everyone. W3 (the faults): asyncbackup at 64 and the peers. W4 (100,000 files):
    the peers on S3, and asyncbackup at 64 on a local store with the same latency injected (its
    100,000 chunks under one prefix would time the emulators' cost per key, not the client's)."""
    if workload.name in ("W1", "W2"):
        return everyone
    if workload.name == "W3":
        return [c for c in everyone if c.concurrency == 64]
    peers = [c for c in everyone if c.store == "s3" and not c.is_asyncbackup]
    return [asyncbackup_local(64, latency_ms), *peers]


def rounds_for(contender: Contender, workload: Workload, rounds: int) -> int:
    """Fewer rounds where a run is long and steady, to keep ``make bench`` near half an hour:
    asyncbackup at 1 on W1 runs once (a minute of 2,000 sequential round trips, steady to a
    percent or two), W2 at most twice, W4 once (minutes a run)."""
    if workload.name == "W4" or (contender.concurrency == 1 and workload.name == "W1"):
        return 1
    return (
        1 if workload.name.startswith("S") else min(rounds, 2) if workload.name == "W2" else rounds
    )


def run_rounds(
    workload: Workload,
    contenders: Sequence[Contender],
    source: Path,
    expected: Expected,
    *,
    spawner: Spawner,
    rounds: int,
    latencies: Sequence[float | None],
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        shift = (round_ - 1) % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            if round_ > rounds_for(contender, workload, rounds):
                continue
            for latency in latencies:
                row = run_one(contender, workload, source, expected, spawner=spawner,
                              latency_ms=latency, seed=round_)  # fmt: skip
                row.update(round=round_, files=workload.files, bytes=workload.total_bytes)
                runs.append(row)
                print(
                    f"{workload.name} round {round_} {contender.store} {contender.name} "
                    f"{'direct' if latency is None else f'{latency:g} ms'}: "
                    f"{row['wall_s']:.2f} s, {'intact' if row['ok'] else 'FAILED'} "
                    f"{row['problems'][:2]} {row['stderr_tail'][-1:] if not row['ok'] else ''}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def chosen_workloads(part: str, workloads: dict[str, Workload]) -> list[Workload]:
    if part == "overhead":
        return [workloads["W1"], workloads["W2"]]
    return list(SCALING) if part == "scaling" else [workloads[part]]


def save_runs(out: Path, part: str, runs: list[dict[str, Any]], params: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"params": params, "machine": machine(), "runs": runs}
    (out / f"runs-{part}.json").write_text(json.dumps(document, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="scaled-down data, one round")
    parser.add_argument("--only", help="comma-separated parts to run (all; quick: all but scaling)")
    parser.add_argument("--rounds", type=int, help="rounds of each contender (3; quick: 1)")
    parser.add_argument("--latency-ms", type=float, default=25.0, help="delay of every request")
    parser.add_argument("--out", type=Path, help="results dir (benchmarks/results[/quick])")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also run asyncbackup c=64 from DIR/asyncbackup (an older checkout) on W1 and W2",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    parts = (
        args.only.split(",")
        if args.only
        else [p for p in PARTS if p != "scaling" or not args.quick]
    )
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if missing := peers_missing():
        sys.exit(f"peer tools missing ({', '.join(missing)}): run `make bench-tools`")
    rounds = args.rounds or (1 if args.quick else 3)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    workloads = {w.name: w for w in (QUICK if args.quick else FULL)}
    params = {"quick": args.quick, "rounds": rounds, "latency_ms": args.latency_ms,
              "command": "python -m benchmarks.suite " + " ".join(argv)}  # fmt: skip
    # a plain kill still stops every server this run started (the finally blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    spawner = Spawner()
    try:
        params["rss_floor_mib"] = spawner.run(["true"], {"PATH": "/bin:/usr/bin"}, timeout=10)[
            "peak_rss_mib"
        ]
        with tempfile.TemporaryDirectory(prefix="asyncbackup-suite-") as tmp:
            everyone = all_contenders(Path(tmp))
            if args.before is not None:
                everyone += [asyncbackup_before(s, 64, args.before) for s in ("s3", "gcs")]
            for part in parts:
                source = Path(tmp, part)
                if part == "local":
                    w1 = workloads["W1"]
                    runs = local.run(spawner, source, files=w1.files // 4, size=w1.size,
                                     latency_ms=args.latency_ms, rounds=rounds)  # fmt: skip
                    save_runs(out, part, runs, params)
                    continue
                runs = []
                for workload in chosen_workloads(part, workloads):
                    print(f"{part}: writing {workload.title} ...", file=sys.stderr, flush=True)
                    expected = make_tree(source, workload)
                    if part == "overhead":  # the delay line's cost: direct, then through it at 0
                        chosen = [asyncbackup("s3", 64), s5cmd()]
                        latencies: list[float | None] = [None, 0.0]
                    elif part == "scaling":  # straight to the server, no delay line
                        chosen, latencies = [asyncbackup("s3", 64), s5cmd()], [None]
                    else:
                        chosen = contenders_for(workload, everyone, args.latency_ms)
                        latencies = [args.latency_ms]
                    runs += run_rounds(workload, chosen, source, expected, spawner=spawner,
                                       rounds=rounds, latencies=latencies)  # fmt: skip
                    shutil.rmtree(source)
                save_runs(out, part, runs, params)
    finally:
        spawner.close()
    summary.main(["--results", str(out)])


if __name__ == "__main__":
    main()
