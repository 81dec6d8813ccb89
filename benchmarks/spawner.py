"""Starts the contenders from a small process, so each one's peak RSS is its own.

Linux carries the parent's high-water RSS into a child's ``ru_maxrss`` at exec (the memory the
child had before exec is counted), so a contender started straight from the suite, which holds
the libraries and a listing of 100,000 objects, would "use" /bin/true's share of 300 MiB. This
process has only the standard library's few modules loaded (``python -S``), so the floor is
about 10 MiB, below any contender's real peak; the suite reports the floor it measured.

Protocol: one JSON line per job on stdin (``argv``, ``env``, ``timeout``), one JSON line back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.abspath(__file__)


def run(argv: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``argv``; its wall time, own CPU seconds, own peak RSS, exit code and last words."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        killer = threading.Timer(timeout, os.kill, (process.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        err.seek(0)
        words = err.read().decode(errors="replace").strip().splitlines()[-3:]
    return {
        "wall_s": wall,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "exit_code": os.waitstatus_to_exitcode(status),
        "stderr_tail": words,
    }


class Spawner:
    """The suite's side: a spawner process, asked to run one contender at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-S", HERE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def run(self, argv: list[str], env: dict[str, str], *, timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        job = {"argv": argv, "env": env, "timeout": timeout}
        self.process.stdin.write(json.dumps(job).encode() + b"\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the spawner died")
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        result = run(job["argv"], job["env"], job["timeout"])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
