"""Where asyncbackup's client CPU goes on W1: cProfile of one backup at concurrency 64 to
rclone serve s3 through the 25 ms delay line, written to ``results/profile-W1.txt``.

    python -m benchmarks.profile [--files 2000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.delayline import DelayLine
from benchmarks.report import RESULTS
from benchmarks.run import ENV, PREFIX
from benchmarks.stores import BUCKET, start_server
from benchmarks.workloads import W1, make_tree

# The calls that say where a PUT's CPU goes: botocore building, signing and parsing a request,
# aiohttp sending it, and the engine's own reading and hashing.
WATCH = (
    "(put_chunk)",  # Repository.put_chunk, whatever its line in repository.py
    "client.py:353(_make_api_call)",
    "endpoint.py:95(create_request)",
    "signers.py:28(sign)",
    "useragent.py:412(to_string)",
    "client.py:521(_resolve_endpoint_ruleset)",
    "parsers.py:40(parse)",
    "httpsession.py:272(send)",
    "chunking.py",
    "select.epoll",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--files", type=int, default=W1.files)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="asyncbackup-profile-") as tmp:
        source = Path(tmp, "source")
        make_tree(source, W1.scaled(args.files, W1.size))
        profile = Path(tmp, "backup.prof")
        server = start_server("s3")
        try:
            with DelayLine(server.port, 25.0) as line:
                subprocess.run(
                    [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "asyncbackup",
                     "backup", str(source), f"s3://{BUCKET}/{PREFIX}", "--endpoint-url", line.url,
                     "--addressing-style", "path", "--concurrency", "64", "--name", "bench", "-q"],
                    env={**os.environ, **ENV}, check=True,
                )  # fmt: skip
        finally:
            server.stop()
        text = io.StringIO()
        stats = pstats.Stats(str(profile), stream=text)
        text.write(
            f"cProfile of asyncbackup backup, {args.files} files of 64 KiB, concurrency 64, "
            "rclone serve s3 behind the 25 ms delay line (times inflated by cProfile)\n"
        )
        text.write("\n== the calls that say where a PUT's CPU goes ==\n")
        stats.sort_stats("cumulative")
        for pattern in WATCH:
            stats.print_stats(re.escape(pattern), 3)
        text.write("\n== top 30 by own time ==\n")
        stats.sort_stats("tottime").print_stats(30)
    args.out.mkdir(parents=True, exist_ok=True)
    cleaned = "\n".join(
        line.replace(str(Path(sys.prefix)), "VENV") for line in text.getvalue().splitlines()
        if line.strip()
        and not line.lstrip().startswith(("Ordered by", "List reduced", "Random"))
        and "function calls" not in line
        and ".prof" not in line
    )  # fmt: skip
    (args.out / "profile-W1.txt").write_text(cleaned + "\n")
    print(cleaned)


if __name__ == "__main__":
    main()
