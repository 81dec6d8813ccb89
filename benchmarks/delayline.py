"""A delay line between a client and a server, in a process of its own: every request waits a set
time before it is forwarded, and a seeded share of requests fail as a throttled or flaky store's do.

It is ``tests/proxy.py``'s FaultProxy run on its own event loop, so its CPU is not charged to the
contender it serves and a busy contender cannot stall it. The parent reads the port from the first
line of stdout, closes stdin to stop it, and reads one JSON line of counts back:

    python -m benchmarks.delayline UPSTREAM_PORT [--latency-ms 25] [--fault-rate 0] [--seed 0]

``DelayLine`` does that from the parent and also takes the proxy's own CPU seconds (``os.wait4``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from tests.proxy import Fault, FaultProxy, Rule


def seeded_rule(*, latency: float, fault_rate: float, seed: int) -> Rule:
    """Delay every request; fail ``fault_rate`` of them, half with 503 SlowDown and half with a
    connection reset before the server saw the request (both retryable by every S3 client)."""
    rng = random.Random(seed)
    delay = Fault("latency", seconds=latency)

    def rule(n: int, method: str, path: str) -> Fault | None:
        draw = rng.random()
        if draw < fault_rate / 2:
            return Fault("status", seconds=latency)
        if draw < fault_rate:
            return Fault("reset", seconds=latency)
        return delay if latency > 0 else None

    return rule


class DelayedFaultProxy(FaultProxy):
    """FaultProxy where a failed request is delayed as much as one that succeeds: a real store's
    503 or reset also costs a round trip, so a fault must not answer faster than the delay."""

    async def _answer(self, fault: Fault | None, *args: Any, **kwargs: Any) -> bool:
        if fault is not None and fault.kind != "latency" and fault.seconds > 0:
            await asyncio.sleep(fault.seconds)
        return await super()._answer(fault, *args, **kwargs)


async def serve(upstream: int, *, latency: float, fault_rate: float, seed: int) -> dict[str, Any]:
    rule = seeded_rule(latency=latency, fault_rate=fault_rate, seed=seed)
    async with DelayedFaultProxy(upstream, rule) as proxy:
        print(proxy.url.rsplit(":", 1)[1], flush=True)
        # stdin closing is the stop signal: it needs no signal handler and survives a killed parent
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.buffer.read)
        return {"requests": len(proxy.requests), "injected": dict(proxy.injected)}


@dataclass
class DelayLine:
    """The delay line as a subprocess, from the parent's side."""

    upstream_port: int
    latency_ms: float = 25.0
    fault_rate: float = 0.0
    seed: int = 0
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayLine:
        argv = [
            sys.executable, "-m", "benchmarks.delayline", str(self.upstream_port),
            "--latency-ms", str(self.latency_ms), "--fault-rate", str(self.fault_rate),
            "--seed", str(self.seed),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip():
            self.__exit__()
            raise RuntimeError("the delay line did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop it and keep its counts and its own CPU seconds in ``stats``."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        report = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        self.stats = json.loads(report) if report.strip() else {}
        self.stats["cpu_s"] = usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delayline", description=__doc__)
    parser.add_argument("upstream", type=int, help="the server's port on 127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=25.0, help="delay of every request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of failed requests")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failures")
    args = parser.parse_args(argv)
    stats = asyncio.run(
        serve(args.upstream, latency=args.latency_ms / 1000, fault_rate=args.fault_rate,
              seed=args.seed)
    )  # fmt: skip
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
