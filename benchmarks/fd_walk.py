"""Backup and restore of many small files, now (walk and restore through directory descriptors,
issue 13) against an older checkout of the package (paths), interleaved round by round.

The older code is a directory holding its ``asyncbackup`` package, put first on PYTHONPATH:

    git archive 8b7a6fb asyncbackup | tar -x -C /tmp/base
    python -m benchmarks.fd_walk --base /tmp/base [--rounds 5] [--files 5000]

Each job is the CLI in its own process on a local store; each version backs up the same tree
into a store of its own (an older version may not read a newer MANIFEST) and restores it. The
whole program differs between the two, not only the walk: the figure bounds what descriptors
cost, it does not isolate it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, command, machine, median_of, save


def make_tree(root: Path, files: int) -> None:
    per_dir = 100
    for i in range(files):
        directory = root / f"a{i // (per_dir * 10):02d}" / f"b{i // per_dir:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:05d}.txt").write_bytes(os.urandom(4096))


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="holds the older asyncbackup/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    versions = {
        "paths (base)": {**os.environ, "PYTHONPATH": str(args.base.absolute())},
        "descriptors (now)": {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asyncbackup-fd-walk-") as tmp:
        source = Path(tmp, "source")
        make_tree(source, args.files)
        for round_ in range(args.rounds):
            order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
            for version in order:
                env = versions[version]
                store, target = Path(tmp, "store"), Path(tmp, "target")
                cli = [sys.executable, "-m", "asyncbackup"]
                backup = timed([*cli, "backup", str(source), str(store), "--name", "b"], env)
                restore = timed([*cli, "restore", str(store), "b", str(target)], env)
                runs.append(
                    {"round": round_, "version": version, "backup": backup, "restore": restore}
                )
                shutil.rmtree(store)
                shutil.rmtree(target)
    base, now = versions
    lines = [
        f"{args.files} files of 4 KiB in {args.files // 100} directories, local store; median "
        f"of {args.rounds} interleaved rounds (seconds, each a CLI process).",
        "",
        "| version | backup s | restore s |",
        "|---|---:|---:|",
    ]
    for version in versions:
        b = median_of(runs, "backup", version=version)
        r = median_of(runs, "restore", version=version)
        lines.append(f"| {version} | {b:.2f} | {r:.2f} |")
    ratio_b = median_of(runs, "backup", version=now) / median_of(runs, "backup", version=base)
    ratio_r = median_of(runs, "restore", version=now) / median_of(runs, "restore", version=base)
    lines.append(f"| now / base | {ratio_b:.2f}x | {ratio_r:.2f}x |")
    table = "\n".join(lines)
    result = {
        "machine": machine(),
        "command": command("benchmarks.fd_walk", argv if argv is not None else sys.argv[1:]),
        "runs": runs,
    }
    save(args.out, "fd_walk", result, table)
    print(table)


if __name__ == "__main__":
    main()
