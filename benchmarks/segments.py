"""Pack segments under the restore's byte budget: what a restore of small packed files costs at
several ``--buffer-budget`` sizes, and, with ``--before DIR``, the same beside another checkout
of asyncbackup (the code before a change), interleaved round by round.

The tree is W1's shape (``--files`` files of 64 KiB, packed by default into packs of 16 MiB),
backed up once into a memory store per process and restored through ``FaultyStorage`` with
``--latency-ms`` per store call (as a remote store would answer). Each restore runs in its own
process (``python benchmarks/segments.py --child``, with ``PYTHONPATH`` naming the checkout
under test), which reports its wall and CPU seconds, peak RSS, the pack requests (whole GETs and
range GETs) and the peak of the restore's byte budget.

    python -m benchmarks.segments [--rounds 3] [--budgets 16 32 128] [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path, files: int) -> None:
    rnd = random.Random(1)
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"f{i:05d}").write_bytes(rnd.randbytes(64 * 1024))


async def child(source: Path, target: Path, budget: int, latency: float) -> dict[str, Any]:
    """One backup into memory, then the measured restore (imports from the checkout under test)."""
    from asyncbackup import BackupEngine, EngineConfig, FaultyStorage, MemoryStorage
    from asyncbackup import restore as restore_module
    from asyncbackup.budget import ByteBudget

    class Counting(MemoryStorage):
        def __init__(self) -> None:
            super().__init__()
            self.whole = self.ranges = 0

        async def get(self, key: str) -> bytes:
            self.whole += key.startswith("packs/")
            return await super().get(key)

        async def get_range(self, key: str, start: int, length: int) -> bytes:
            self.ranges += key.startswith("packs/")
            return (await super().get(key))[start : start + length]  # not counted as a get

    budgets: list[ByteBudget] = []

    class Recorded(ByteBudget):
        def __init__(self, capacity: int) -> None:
            super().__init__(capacity)
            budgets.append(self)

    setattr(restore_module, "ByteBudget", Recorded)  # noqa: B010 - the restore's own budget
    store = Counting()
    config = EngineConfig(concurrency=64, buffer_budget=budget)
    await BackupEngine(store, config).backup(source, name="w1")
    store.whole = store.ranges = 0
    slow = FaultyStorage(store, latency=latency)
    wall, cpu = time.monotonic(), time.process_time()
    await BackupEngine(slow, config).restore("w1", target)
    return {
        "seconds": time.monotonic() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "whole_pack_gets": store.whole,
        "range_gets": store.ranges,
        "budget_peak_mib": budgets[-1].peak / MiB,
    }


def measure(checkout: Path, source: Path, budget_mib: int, latency_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(source)]
        argv += [str(Path(scratch) / "out"), str(budget_mib), str(latency_ms)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed:\n{done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:
        where, target, budget, latency = args_in[1:5]
        result = asyncio.run(
            child(Path(where), Path(target), int(budget) * MiB, float(latency) / 1000)
        )
        print(json.dumps(result))
        return
    from benchmarks.report import RESULTS, command, machine, median_of, save

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 128], metavar="MIB")
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--before", type=Path, help="another checkout, measured beside this one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(args_in)
    sides = {"now": REPO} | ({"before": args.before.resolve()} if args.before else {})
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "w1"
        make_tree(source, args.files)
        for round_ in range(args.rounds):
            for budget in args.budgets:
                order = list(sides.items())
                if round_ % 2:
                    order.reverse()  # neither side always runs first
                for side, checkout in order:
                    run = measure(checkout, source, budget, args.latency_ms)
                    runs.append({"side": side, "budget_mib": budget, "round": round_, **run})
                    print(f"round {round_} budget {budget} MiB {side}: {run}", flush=True)
    lines = [
        "| budget | side | wall (median) | CPU | pack GETs: whole + range | budget peak | RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget in args.budgets:
        for side in sides:

            def med(field: str, side: str = side, budget: int = budget) -> float:
                return median_of(runs, field, side=side, budget_mib=budget)

            ratio = ""
            if side == "now" and "before" in sides:
                before = median_of(runs, "seconds", side="before", budget_mib=budget)
                ratio = f" ({before / med('seconds'):.2f}x faster)"
            lines.append(
                f"| {budget} MiB | {side} | {med('seconds'):.2f} s{ratio} | "
                f"{med('cpu_seconds'):.2f} s | {med('whole_pack_gets'):.0f} + "
                f"{med('range_gets'):.0f} | {med('budget_peak_mib'):.1f} MiB | "
                f"{med('peak_rss_mib'):.0f} MiB |"
            )
    result = {
        "command": command("benchmarks.segments", args_in),
        "machine": machine(),
        "runs": runs,
    }
    save(args.out, "segments", result, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
