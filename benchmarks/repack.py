"""Prune of packs beside restic's: what reclaiming the space of a forgotten backup costs.

Each round, into fresh local repositories, asyncbackup then restic on the same tree:

1. back up a tree of ``--files`` random files of ``--kib`` KiB each (small files: they go into
   packs in both tools);
2. delete every other file, and back up again;
3. prune keeping the last backup: asyncbackup ``prune --keep-last 1 --grace 0s`` (packs over
   ``--max-unused`` repacked, default 10% per pack); restic ``forget --keep-last 1 --prune``
   (its default ``--max-unused 5%`` of the repository).

Step 3 is measured from outside (``os.wait4``): wall time, CPU (user + system) and peak RSS;
and the repository's size on disk before and after it (``du`` of the directory). Its peak RSS is
what the repack's memory bound is about: ``--buffer-budget`` (128 MiB by default) of pack data
plus the interpreter and the INDEXes. The files are random, so neither tool's compression
changes the picture; restic also encrypts, which costs it CPU we do not spend.

    python -m benchmarks.repack [--files 4000] [--kib 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.incremental import RESTIC_PASSWORD, find_restic
from benchmarks.report import RESULTS, command, machine, median_of, save

MiB = 1024 * 1024


@dataclass
class Run:
    tool: str
    round: int
    seconds: float
    cpu: float
    rss_mib: float
    before_mib: float
    after_mib: float
    summary: str = ""


def make_tree(root: Path, *, files: int, kib: int, seed: int) -> None:
    rnd = random.Random(seed)
    for i in range(files):
        directory = root / f"d{i % 50:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:06d}").write_bytes(rnd.randbytes(kib * 1024))


def halve(root: Path) -> None:
    """Delete every other file: half of what the first backup holds is then unused."""
    for i, path in enumerate(sorted(root.rglob("f*"))):
        if i % 2:
            path.unlink()


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MiB


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run ``argv``: (wall seconds, CPU seconds, peak RSS MiB, stderr)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    err = process.stderr.read().decode(errors="replace")  # small: read before the wait
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed:\n{err[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, err


def one_round(
    round_: int, scratch: Path, args: argparse.Namespace, restic: str | None, env: dict[str, str]
) -> list[Run]:
    tree = scratch / f"tree-{round_}"
    make_tree(tree, files=args.files, kib=args.kib, seed=round_)
    ours, theirs = scratch / f"store-{round_}", scratch / f"restic-{round_}"
    abk = [sys.executable, "-m", "asyncbackup"]
    steps: list[tuple[str, list[str], list[str], Path]] = [
        ("asyncbackup", [*abk, "backup", str(tree), str(ours), "-q"],
         [*abk, "prune", str(ours), "--keep-last", "1", "--grace", "0s"], ours),
    ]  # fmt: skip
    if restic:
        subprocess.run([restic, "-r", str(theirs), "-q", "init"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        steps.append(("restic", [restic, "-r", str(theirs), "-q", "backup", str(tree)],
                      [restic, "-r", str(theirs), "forget", "--keep-last", "1", "--prune"],
                      theirs))  # fmt: skip
    for _, backup, _, _ in steps:
        run(backup, env)
    halve(tree)
    for _, backup, _, _ in steps:
        run(backup, env)
    runs = []
    for tool, _, prune, repo in steps:
        before = du(repo)
        wall, cpu, rss, err = run(prune, env)
        summary = next((line for line in err.splitlines() if "packs:" in line), "")
        runs.append(Run(tool, round_, wall, cpu, rss, before, du(repo), summary))
        print(f"  {tool:11} prune {wall:6.2f} s  {cpu:6.2f} s CPU  {rss:6.1f} MiB RSS  "
              f"{before:7.1f} -> {du(repo):7.1f} MiB", flush=True)  # fmt: skip
    shutil.rmtree(tree)
    shutil.rmtree(ours, ignore_errors=True)
    shutil.rmtree(theirs, ignore_errors=True)
    return runs


def table(runs: list[dict[str, Any]], tools: list[str]) -> str:
    lines = [
        "| prune of half the data | " + " | ".join(tools) + " | asyncbackup / restic |",
        "|---|" + "---:|" * (len(tools) + 1),
    ]
    rows = (
        ("seconds", "wall, s"),
        ("cpu", "CPU, s"),
        ("rss_mib", "peak RSS, MiB"),
        ("before_mib", "store before, MiB"),
        ("after_mib", "store after, MiB"),
    )
    for field, label in rows:
        values = [median_of(runs, field, tool=t) for t in tools]
        ratio = f"{values[0] / values[1]:.2f}" if len(values) == 2 and values[1] else ""
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--kib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    restic = find_restic()
    env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-repack-") as scratch:
        env["RESTIC_CACHE_DIR"] = str(Path(scratch) / "restic-cache")
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}", flush=True)
            runs += one_round(round_, Path(scratch), args, restic, env)
    tools = ["asyncbackup"] + (["restic"] if restic else [])
    data = [asdict(r) for r in runs]
    out = table(data, tools)
    ours = [r.summary for r in runs if r.tool == "asyncbackup"]
    result = {
        "command": command("benchmarks.repack", argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "runs": data,
        "summary": re.sub(r"^\S+ \S+ INFO ", "", ours[-1]) if ours else "",
    }
    print(out)
    save(RESULTS, "repack", result, out)


if __name__ == "__main__":
    main()
