"""Where a restore of one large file spends its CPU: the event loop against the worker threads,
and a cProfile of the loop. One file of random bytes is backed up by the CLI to ``rclone serve
s3`` behind the 25 ms delay line; the restore then runs in this process (the CLI's ``main``)
under cProfile, with the process's CPU from ``getrusage`` and the loop thread's from
``time.thread_time`` (cProfile sees only the loop's thread; the rest is the worker threads').

    python -m benchmarks.profile_restore [--size-mib 512] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.delayline import DelayLine
from benchmarks.run import ENV
from benchmarks.stores import BUCKET, start_server

MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asyncbackup-profile-") as scratch:
        source = Path(scratch, "source")
        source.mkdir()
        with (source / "big.bin").open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        server = start_server("s3")
        try:
            with DelayLine(server.port, 25.0, 0.0, 0) as line:
                os.environ.update(ENV)
                store = f"s3://{BUCKET}/profile"
                common = ["--endpoint-url", line.url, "--addressing-style", "path",
                          "--concurrency", str(args.concurrency), "-q"]  # fmt: skip
                backup = [sys.executable, "-m", "asyncbackup", "backup", str(source), store]
                subprocess.run([*backup, "--name", "p", *common], check=True)
                from asyncbackup.cli import main as cli

                before = resource.getrusage(resource.RUSAGE_SELF)
                loop_before, started = time.thread_time(), time.perf_counter()
                profile = cProfile.Profile()
                profile.enable()
                code = cli(["restore", store, "p", str(Path(scratch, "restored")), *common])
                profile.disable()
                wall, loop = time.perf_counter() - started, time.thread_time() - loop_before
                after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            server.stop()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(
        f"restore of {args.size_mib} MiB at {args.concurrency}: exit {code}, wall {wall:.2f} s, "
        f"CPU {cpu:.2f} s: event loop {loop:.2f} s, worker threads {cpu - loop:.2f} s"
    )
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(20)
    print(out.getvalue())


if __name__ == "__main__":
    main()
