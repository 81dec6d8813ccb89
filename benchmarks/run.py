"""One measured run: a fresh server, the delay line in front of it, one contender uploading one
tree, and a check of what the server holds afterwards.

The contender is a subprocess of the spawner; ``os.wait4`` gives its own CPU seconds and peak RSS
(not the maximum over every child ever waited for, as ``RUSAGE_CHILDREN`` would). The
server's CPU seconds come from ``/proc/PID/stat`` before and after; the delay line counts the
requests and reports its own CPU separately, so it is charged to no one.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.contenders import KEY, SECRET, Contender
from benchmarks.delayline import DelayLine
from benchmarks.spawner import Spawner
from benchmarks.stores import BUCKET, cpu_seconds, listing, problems, start_server
from benchmarks.workloads import Expected, Workload

PREFIX = "bench"
TIMEOUT_S = 1800.0  # a contender that takes longer is killed and its run reported as failed
ENV = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # rclone serve s3 sends no response checksums; botocore must not insist on them
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def run_one(
    contender: Contender,
    workload: Workload,
    source: Path,
    expected: Expected,
    *,
    spawner: Spawner,
    latency_ms: float | None,
    seed: int,
) -> dict[str, Any]:
    """Upload ``source`` with ``contender`` into a fresh server and check every object.

    ``latency_ms`` None: straight to the server, no delay line (to measure the line's cost).
    """
    store = contender.store
    server = start_server(store)
    try:
        with ExitStack() as stack:
            endpoint, line = server.url, None
            if latency_ms is not None:
                line = stack.enter_context(
                    DelayLine(server.port, latency_ms, workload.fault_rate, seed)
                )
                endpoint = line.url
            env = {**contender.env, "STORAGE_EMULATOR_HOST": endpoint}
            before = cpu_seconds(server.process.pid)
            argv = contender.argv(source, endpoint, f"{BUCKET}/{PREFIX}")
            result = spawner.run(argv, {**os.environ, **ENV, **env}, timeout=TIMEOUT_S)
            result["server_cpu_s"] = cpu_seconds(server.process.pid) - before
        found = listing(store, server, PREFIX + "/")
    finally:
        server.stop()
    if contender.is_asyncbackup:
        bad = problems(found, expected.asyncbackup, also=frozenset({expected.manifest}))
    else:
        bad = problems(found, expected.files)
    stats = line.stats if line is not None else {}
    return {
        "workload": workload.name,
        "store": store,
        "contender": contender.name,
        "concurrency": contender.concurrency,
        "latency_ms": latency_ms,
        **result,
        "requests": stats.get("requests"),
        "injected": stats.get("injected", {}),
        "proxy_cpu_s": stats.get("cpu_s"),
        "objects": len(found),
        "intact": not bad,  # every object there with the right size and MD5
        "ok": not bad and result["exit_code"] == 0,
        "problems": bad[:5] + ([f"... {len(bad) - 5} more"] if len(bad) > 5 else []),
    }
