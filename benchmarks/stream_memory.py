"""Peak memory of a backup from standard input, side by side with the backup of the same bytes
as a file: a stream must be held to the same bound, 2 x concurrency x chunk_size of data.

For each concurrency, three runs interleaved: the file, the same bytes piped through ``cat``
(the event loop's pipe reader), and the same bytes redirected from the file (``< file``: the
worker-thread reader). Each job is the CLI in its own process against a local store slowed by
injected latency (40 ms x concurrency per request, so uploads are slower than reading and every
buffer the job may hold fills); the peak RSS comes from ``os.wait4``. Each figure is the median
of ``--rounds`` rounds.

    python -m benchmarks.stream_memory [--mib 512] [--rounds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from benchmarks.report import RESULTS, command, machine, save

MiB = 1024 * 1024
CHUNK = 8 * MiB


def peak_rss_mib(argv: list[str], stdin: IO[bytes] | int | None = None) -> float:
    """Run ``argv`` with ``stdin`` and return its peak resident set size in MiB."""
    process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv} exited {process.returncode}")
    return usage.ru_maxrss / 1024


def backup(source: str, store: Path, name: str, *, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "asyncbackup", "backup", source, str(store), "-q", "--name", name,
        "--concurrency", str(concurrency), "--inject-latency", str(40 * concurrency),
    ]  # fmt: skip


def one_round(root: Path, big: Path, concurrency: int, round_: int) -> dict[str, float]:
    """The three runs of one round, each into a store of its own (nothing is deduplicated)."""
    peaks: dict[str, float] = {}
    store = root / f"store-{concurrency}-{round_}"
    peaks["file"] = peak_rss_mib(backup(str(big.parent), store / "f", "b", concurrency=concurrency))
    cat = subprocess.Popen(["cat", str(big)], stdout=subprocess.PIPE)
    try:
        argv = backup("-", store / "p", "b", concurrency=concurrency)
        peaks["pipe"] = peak_rss_mib(argv, stdin=cat.stdout)
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait()
    with open(big, "rb") as redirected:
        argv = backup("-", store / "r", "b", concurrency=concurrency)
        peaks["redirect"] = peak_rss_mib(argv, stdin=redirected)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the data")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        big = root / "data" / "file.bin"
        with open(big, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        (root / "empty").mkdir()
        idle = peak_rss_mib(backup(str(root / "empty"), root / "idle", "b", concurrency=1))
        for concurrency in (1, 4, 16):
            rounds = [one_round(root, big, concurrency, r) for r in range(args.rounds)]
            median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            rows.append(
                {
                    "concurrency": concurrency,
                    "bound_mib": round(idle + (2 * concurrency + 1) * CHUNK / MiB, 1),
                    **{f"{k}_mib": round(v, 1) for k, v in median.items()},
                    "pipe_over_file": round(median["pipe"] / median["file"], 2),
                    "redirect_over_file": round(median["redirect"] / median["file"], 2),
                }
            )

    table = [
        f"Peak RSS (MiB) backing up {args.mib} MiB; baseline (empty directory) {idle:.1f} MiB.",
        "",
        "| concurrency | file | stdin, pipe | stdin, `< file` | pipe / file | `<` / file "
        "| bound: baseline + (2c + 1) x 8 MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['concurrency']} | {r['file_mib']} | {r['pipe_mib']} | {r['redirect_mib']} "
            f"| {r['pipe_over_file']} | {r['redirect_over_file']} | {r['bound_mib']} |"
        )
    markdown = "\n".join(table)
    print(markdown)
    result = {"command": command("benchmarks.stream_memory", sys.argv[1:]), "machine": machine()}
    save(args.out, "stream_memory", {**result, "baseline_mib": idle, "runs": rows}, markdown)


if __name__ == "__main__":
    main()
