"""What a restore costs the first time, run again over a complete target, and run again after
a tenth of the files went missing (``restore --overwrite`` keeps files already in place, hashed
locally); and how much disk a sparse file takes once restored.

Each restore is the CLI in its own process against a local store slowed by injected latency
(``--latency-ms`` per store call, as a remote store would be); the three kinds of run are
interleaved round by round, so a slower moment of a shared machine hits each of them alike.
Peak RSS comes from ``os.wait4``.

    python -m benchmarks.restore_again [--rounds 3] [--latency-ms 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, command, machine, median_of, save

MiB = 1024 * 1024
SMALL_FILES = 1000
LARGE_FILES = 10
SPARSE_SIZE = 512 * MiB
SPARSE_DATA_AT = (0, 200 * MiB, SPARSE_SIZE - 4 * MiB)  # 4 MiB of data at each


def make_source(root: Path) -> None:
    (root / "small").mkdir(parents=True)
    for i in range(SMALL_FILES):
        (root / "small" / f"f{i:04d}").write_bytes(os.urandom(16 * 1024))
    for i in range(LARGE_FILES):
        (root / f"large-{i}.bin").write_bytes(os.urandom(4 * MiB))
    with (root / "disk.img").open("wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset in SPARSE_DATA_AT:
            f.seek(offset)
            f.write(os.urandom(4 * MiB))


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "asyncbackup", *map(str, args)]


def run(argv: list[str]) -> dict[str, Any]:
    """Run ``argv``; its seconds, peak RSS (MiB) and the chunks its summary says it fetched."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed:\n{stderr}")
    found = re.search(r"(\d+) chunks downloaded", stderr)
    assert found, stderr
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "chunks_downloaded": int(found.group(1)),
    }


def disk_usage_mib(root: Path) -> float:
    used = sum(
        os.lstat(Path(d) / n).st_blocks * 512 for d, _, files in os.walk(root) for n in files
    )
    return used / MiB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asyncbackup-restore-again-") as tmp:
        source, store = Path(tmp, "source"), Path(tmp, "store")
        make_source(source)
        backup = cli("backup", source, store, "--name", "b", "--chunk-size", "1M")
        subprocess.run(backup, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        slow = ("--inject-latency", str(args.latency_ms))
        sparse_mib = 0.0
        for round_ in range(args.rounds):
            target = Path(tmp, f"target-{round_}")
            fresh = run(cli("restore", store, "b", target, *slow))
            sparse_mib = os.stat(target / "disk.img").st_blocks * 512 / MiB
            again = run(cli("restore", store, "b", target, "--overwrite", *slow))
            for i in range(0, SMALL_FILES, 10):  # a tenth of the small files, and one large
                (target / "small" / f"f{i:04d}").unlink()
            (target / "large-0.bin").unlink()
            partial = run(cli("restore", store, "b", target, "--overwrite", *slow))
            for kind, result in (("fresh", fresh), ("again", again), ("tenth missing", partial)):
                runs.append({"round": round_, "kind": kind, **result})
            usage = disk_usage_mib(target)
            shutil.rmtree(target)
    kinds = ("fresh", "again", "tenth missing")
    base = median_of(runs, "seconds", kind="fresh")
    lines = [
        f"Restore of {SMALL_FILES} files of 16 KiB, {LARGE_FILES} of 4 MiB and a sparse file of "
        f"{SPARSE_SIZE // MiB} MiB (12 MiB of data), chunks of 1 MiB, {args.latency_ms} ms per "
        f"store call; median of {args.rounds} interleaved rounds.",
        "",
        "| run | seconds | vs fresh | chunks downloaded | peak RSS (MiB) |",
        "|---|---|---|---|---|",
    ]
    for kind in kinds:
        seconds = median_of(runs, "seconds", kind=kind)
        chunks = median_of(runs, "chunks_downloaded", kind=kind)
        rss = median_of(runs, "peak_rss_mib", kind=kind)
        lines.append(
            f"| {kind} | {seconds:.2f} | {seconds / base:.2f}x | {chunks:.0f} | {rss:.0f} |"
        )
    lines += [
        "",
        f"The sparse file restored: {SPARSE_SIZE // MiB} MiB long, {sparse_mib:.1f} MiB on disk; "
        f"the whole restored tree: {usage:.1f} MiB on disk.",
    ]
    table = "\n".join(lines)
    result = {
        "machine": machine(),
        "command": command("benchmarks.restore_again", argv if argv is not None else sys.argv[1:]),
        "runs": runs,
        "sparse_on_disk_mib": sparse_mib,
    }
    save(args.out, "restore_again", result, table)
    print(table)


if __name__ == "__main__":
    main()
