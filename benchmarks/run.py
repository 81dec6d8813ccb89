"""One measured run: a fresh server, the delay line in front of it, one contender uploading one
tree, and a check of what the server holds afterwards.

The contender is a subprocess of the spawner; ``os.wait4`` gives its own CPU seconds and peak RSS
(not the maximum over every child ever waited for, as ``RUSAGE_CHILDREN`` would). The
server's CPU seconds come from ``/proc/PID/stat`` before and after; the delay line counts the
requests and reports its own CPU separately, so it is charged to no one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.contenders import KEY, SECRET, Contender
from benchmarks.delayline import DelayLine
from benchmarks.spawner import Spawner
from benchmarks.stores import (
    BUCKET,
    Listing,
    cpu_seconds,
    listing,
    listing_local,
    problems,
    start_server,
)
from benchmarks.workloads import Expected, Workload

PREFIX = "bench"
# W4's local store: in RAM (tmpfs), so the shared disk's fsyncs are not what is measured
LOCAL_ROOT = "/dev/shm" if Path("/dev/shm").is_dir() else None
TIMEOUT_S = 1800.0  # a contender that takes longer is killed and its run reported as failed
ENV = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # rclone serve s3 sends no response checksums; botocore must not insist on them
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def _served(
    contender: Contender,
    workload: Workload,
    source: Path,
    *,
    spawner: Spawner,
    latency_ms: float | None,
    seed: int,
) -> tuple[dict[str, Any], Listing, DelayLine | None]:
    """The run against a fresh server, through the delay line unless ``latency_ms`` is None."""
    server = start_server(contender.store)
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
        return result, listing(contender.store, server, PREFIX + "/"), line
    finally:
        server.stop()


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
    if store == "local":  # no server: the latency is asyncbackup's own --inject-latency
        with tempfile.TemporaryDirectory(prefix="store-", dir=LOCAL_ROOT) as root:
            argv = contender.argv(source, "", root)
            result = spawner.run(argv, {**os.environ, **ENV}, timeout=TIMEOUT_S)
            result["server_cpu_s"] = None
            found, line = listing_local(Path(root)), None
    else:
        result, found, line = _served(contender, workload, source, spawner=spawner,
                                      latency_ms=latency_ms, seed=seed)  # fmt: skip
    if contender.is_asyncbackup:
        index = expected.manifest.replace("/MANIFEST", "/INDEX")  # if it packed chunks
        mark = expected.manifest.replace("/MANIFEST", "/SOURCE.")  # its host and source mark
        also = {expected.manifest, *([index] if index in found else [])}
        also |= {key for key in found if key.startswith(mark)}
        bad = problems(found, expected.asyncbackup, also=frozenset(also))
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
