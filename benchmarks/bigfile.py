"""W2, one large file, both ways: asyncbackup's backup and restore against s5cmd's upload and
download, on ``rclone serve s3`` behind the 25 ms delay line, with wall time, client CPU and
peak RSS of each.

Each round runs every contender in turn (the order rotated by one each round, so no one always
goes first on a cold or warm machine), each against a fresh server: upload the file, then
download it into an empty directory, whose sha256 is checked against the source's (outside the
measured time). ``--before DIR`` adds asyncbackup from an older checkout (``DIR/asyncbackup``),
run with this venv's libraries: the same runs before a change.

    python -m benchmarks.bigfile [--size-mib 1024] [--rounds 3] [--latency-ms 25]
                                 [--concurrency 16,64] [--before DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.contenders import PART_MIB, PEER_CONCURRENCY, _site_binary, peers_missing
from benchmarks.delayline import DelayLine
from benchmarks.report import RESULTS, command, machine, save
from benchmarks.run import ENV
from benchmarks.spawner import Spawner
from benchmarks.stores import BUCKET, cpu_seconds, start_server

MiB = 1024 * 1024
TIMEOUT_S = 900.0
Argv = Callable[[str, Path, Path], list[str]]  # (endpoint, source dir, target dir) -> argv


@dataclass(frozen=True)
class Tool:
    """One contender: how it uploads the source directory and downloads it back."""

    name: str
    up: Argv
    down: Argv
    env: dict[str, str] = field(default_factory=dict)


def asyncbackup(concurrency: int, *, before: Path | None = None) -> Tool:
    python = [sys.executable]
    env: dict[str, str] = {}
    name = f"asyncbackup c={concurrency}"
    if before is not None:  # the older tree first, this venv's libraries after it
        packages = next(p for p in sys.path if p.endswith("site-packages"))
        env = {"PYTHONPATH": f"{before.absolute()}{os.pathsep}{packages}"}
        python += ["-S", "-P"]
        name += ", before"
    store = f"s3://{BUCKET}/ab"
    common = ["--concurrency", str(concurrency), "-q", "--addressing-style", "path"]

    def up(endpoint: str, source: Path, target: Path) -> list[str]:
        return [*python, "-m", "asyncbackup", "backup", str(source), store, "--name", "w2",
                "--endpoint-url", endpoint, *common]  # fmt: skip

    def down(endpoint: str, source: Path, target: Path) -> list[str]:
        return [*python, "-m", "asyncbackup", "restore", store, "w2", str(target),
                "--endpoint-url", endpoint, *common]  # fmt: skip

    return Tool(name, up, down, env)


def s5cmd() -> Tool:
    binary = str(_site_binary("s5cmd", "s5cmd"))
    flags = ["--concurrency", str(PEER_CONCURRENCY), "--part-size", str(PART_MIB)]

    def run(endpoint: str, what: list[str]) -> list[str]:
        return [binary, "--endpoint-url", endpoint, "--numworkers", str(PEER_CONCURRENCY),
                "--log", "error", "cp", *flags, *what]  # fmt: skip

    def up(endpoint: str, source: Path, target: Path) -> list[str]:
        return run(endpoint, [f"{source}/*", f"s3://{BUCKET}/s5/"])

    def down(endpoint: str, source: Path, target: Path) -> list[str]:
        return run(endpoint, [f"s3://{BUCKET}/s5/*", f"{target}/"])

    return Tool("s5cmd", up, down)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def write_source(root: Path, size: int) -> str:
    """One file of ``size`` random bytes (no chunk repeats, nothing compresses); its sha256."""
    root.mkdir(parents=True)
    digest = hashlib.sha256()
    with (root / "big.bin").open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def one_run(
    tool: Tool, source: Path, scratch: Path, expected: str, *, spawner: Spawner, latency_ms: float
) -> list[dict[str, Any]]:
    """Upload then download with ``tool`` against a fresh server behind the delay line."""
    server = start_server("s3")
    rows: list[dict[str, Any]] = []
    target = scratch / "restored"
    try:
        with ExitStack() as stack:
            line = stack.enter_context(DelayLine(server.port, latency_ms, 0.0, 0))
            env = {**os.environ, **ENV, **tool.env}
            for op, argv in (("backup", tool.up), ("restore", tool.down)):
                before = cpu_seconds(server.process.pid)
                if op == "restore":
                    target.mkdir()
                result = spawner.run(argv(line.url, source, target), env, timeout=TIMEOUT_S)
                result["server_cpu_s"] = cpu_seconds(server.process.pid) - before
                if op == "restore":
                    restored = target / "big.bin"
                    result["intact"] = restored.exists() and sha256_of(restored) == expected
                    shutil.rmtree(target)
                else:
                    result["intact"] = result["exit_code"] == 0
                result.update(contender=tool.name, op=op)
                rows.append(result)
                print(f"  {tool.name} {op}: {result['wall_s']:.2f} s, "
                      f"{result['peak_rss_mib']:.0f} MiB, "
                      f"{'intact' if result['intact'] else 'FAILED ' + str(result['stderr_tail'])}",
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        server.stop()
    return rows


def table(runs: list[dict[str, Any]], tools: list[Tool], size: int) -> str:
    lines = [
        "| op | contender | wall (s) | MiB/s | speed vs s5cmd | client CPU (s) | peak RSS (MiB) "
        "| intact runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op in ("backup", "restore"):
        peer = [r["wall_s"] for r in runs if r["contender"] == "s5cmd" and r["op"] == op]
        peer_wall = statistics.median(peer) if peer else None
        for tool in tools:
            mine = [r for r in runs if r["contender"] == tool.name and r["op"] == op]
            if not mine:
                continue
            wall = statistics.median(r["wall_s"] for r in mine)
            cpu = statistics.median(r["client_cpu_s"] for r in mine)
            rss = max(r["peak_rss_mib"] for r in mine)
            ratio = f"{peer_wall / wall:.2f}x" if peer_wall else ""
            intact = sum(1 for r in mine if r["intact"])
            lines.append(
                f"| {op} | {tool.name} | {wall:.2f} | {size / MiB / wall:.0f} | {ratio} "
                f"| {cpu:.2f} | {rss:.0f} | {intact}/{len(mine)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bigfile", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="the file's size (1024: W2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=25.0, help="delay of every request")
    parser.add_argument("--concurrency", default="16,64", help="asyncbackup's, comma-separated")
    parser.add_argument("--before", type=Path, metavar="DIR", help="an older checkout, also run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if peers_missing():
        sys.exit("s5cmd and rclone are missing: run `make bench-tools`")
    levels = [int(c) for c in args.concurrency.split(",")]
    tools = [asyncbackup(c) for c in levels] + [s5cmd()]
    if args.before is not None:
        tools.insert(len(levels), asyncbackup(max(levels), before=args.before))
    size = args.size_mib * MiB
    # a plain kill still stops every server this run started (the finally blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    spawner = Spawner()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="asyncbackup-bigfile-") as tmp:
            source = Path(tmp, "source")
            expected = write_source(source, size)
            for round_ in range(1, args.rounds + 1):
                shift = (round_ - 1) % len(tools)
                print(f"round {round_}", file=sys.stderr, flush=True)
                for tool in [*tools[shift:], *tools[:shift]]:
                    rows = one_run(tool, source, Path(tmp), expected, spawner=spawner,
                                   latency_ms=args.latency_ms)  # fmt: skip
                    runs += [dict(r, round=round_) for r in rows]
    finally:
        spawner.close()
    text = table(runs, tools, size)
    print(text)
    result = {
        "command": command("benchmarks.bigfile", argv),
        "machine": machine(),
        "params": vars(args) | {"before": str(args.before), "out": str(args.out)},
        "runs": runs,
    }
    save(args.out, "bigfile", result, text)


if __name__ == "__main__":
    main()
