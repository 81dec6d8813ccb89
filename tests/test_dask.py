"""Backups and restores as shards on a real Dask cluster: a ``dask scheduler`` and ``dask
worker`` processes on 127.0.0.1, started here and stopped by PID; on the local store and on S3
(moto), through the command line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest

from asyncbackup.shards import shard_of
from tests.conftest import SMALL_CHUNK, assert_same_tree, make_tree
from tests.servers import Server, free_port
from tests.test_cli import EXIT_OK, EXIT_USAGE, ROOT, cli

pytest.importorskip("distributed", reason="needs asyncbackup[dask] (make install has it)")
DASK = Path(sys.executable).with_name("dask")
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass
class Cluster:
    """A Dask scheduler and its workers, each a process of its own."""

    address: str
    log_dir: Path
    env: dict[str, str]
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[BinaryIO] = field(default_factory=list)

    @property
    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers if w.poll() is None}

    def start_worker(self) -> None:
        index = len(self.workers)
        log = (self.log_dir / f"worker-{index}.log").open("wb")
        self.logs.append(log)
        self.workers.append(subprocess.Popen(
            [str(DASK), "worker", self.address, "--nthreads", "1", "--no-nanny",
             "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{index}"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        ))  # fmt: skip

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=60) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(count, timeout=60)

    def stop(self) -> None:
        """Workers, then the scheduler, by PID: SIGTERM, then SIGKILL if one lingers."""
        for process in [*self.workers, self.scheduler]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            if process is None:
                continue
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        for log in self.logs:
            log.close()


def start_cluster(log_dir: Path, env: dict[str, str], workers: int) -> Cluster:
    port = free_port()
    cluster = Cluster(f"tcp://127.0.0.1:{port}", log_dir, env)
    log = (log_dir / "scheduler.log").open("wb")
    cluster.logs.append(log)
    cluster.scheduler = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        for _ in range(workers):
            cluster.start_worker()
        cluster.wait_for_workers(workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(moto_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three workers, which reach moto as the CLI does (its endpoint and keys)."""
    env = {**os.environ, **MOTO_ENV, "AWS_ENDPOINT_URL": moto_server.url}
    started = start_cluster(tmp_path_factory.mktemp("dask"), env, workers=3)
    yield started
    started.stop()


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store-root")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/repo"


def many_files(root: Path, count: int, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sub = root / f"d{i % 5}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:03d}.bin").write_bytes(os.urandom(size) + i.to_bytes(4, "big"))
    return root


def test_backup_and_restore_on_dask_restore_identically(
    cluster: Cluster, store_url: str, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "source")
    many_files(tree / "more", 40, 3000)
    backup = cli(
        "backup", tree, store_url, "--name", "b", "--dask", cluster.address, "--shards", "6",
        "--chunk-size", str(SMALL_CHUNK), "--json", timeout=180,
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr
    done = json.loads(backup.stdout)
    assert [s["index"] for s in done["shards"]] == list(range(6))
    # The work ran in every worker process: each shard reports the pid that ran it.
    assert {s["pid"] for s in done["shards"]} == cluster.worker_pids
    assert sum(s["files"] for s in done["shards"]) == done["commit"]["files"] == 53
    listing = json.loads(cli("list", store_url, "--json").stdout)
    assert [(b["name"], b["host"]) for b in listing] == [("b", "(shards)")]

    target = tmp_path / "restored"
    restore = cli(
        "restore", store_url, "b", target, "--dask", cluster.address, "--shards", "3",
        timeout=180,
    )  # fmt: skip
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, target)
    assert "3 shards on 3 Dask workers" in restore.stderr
    refused = cli("restore", store_url, "b", target, "--dask", cluster.address, "--shards", "3")
    assert refused.returncode == EXIT_USAGE and "is not empty" in refused.stderr


def test_a_worker_killed_mid_backup_the_shard_runs_elsewhere_and_it_commits(
    store_url: str, tmp_path: Path, moto_server: Server
) -> None:
    env = {**os.environ, **MOTO_ENV, "AWS_ENDPOINT_URL": moto_server.url}
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    two = start_cluster(log_dir, env, workers=2)
    try:
        source = many_files(tmp_path / "source", 80, SMALL_CHUNK // 4)
        # Slow calls (100 ms each, two transfers at a time), so the kill lands mid-shard.
        # Chunk objects (--pack-threshold 0), so the kill can be timed by counting them; a
        # re-run reuses packs too (test_shards.py::test_a_killed_shard_that_packs_...).
        backup = subprocess.Popen(
            [sys.executable, "-m", "asyncbackup", "backup", str(source), store_url, "--name",
             "k", "--dask", two.address, "--shards", "2", "--chunk-size", str(SMALL_CHUNK),
             "--inject-latency", "100", "--concurrency", "2", "--pack-threshold", "0", "--json"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        victim = two.workers[0]
        shard_of_chunk = {
            hashlib.sha256(path.read_bytes()).hexdigest(): shard_of(
                path.relative_to(source).as_posix(), 2
            )
            for path in source.rglob("*.bin")
        }
        stored = _wait_for_chunks(store_url, shard_of_chunk, at_least=4, process=backup)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        out, err = backup.communicate(timeout=240)
        assert backup.returncode == EXIT_OK, err
        done = json.loads(out)
        survivor = two.workers[1].pid
        # Both shards finished in the survivor: the one that died was run again there.
        assert {s["pid"] for s in done["shards"]} == {survivor}
        rerun = [s for s in done["shards"] if s["rerun"]]
        assert len(rerun) == 1, done["shards"]
        # ...and it reused what the dead attempt had stored: it uploaded fewer chunks than
        # it has files (each file is one chunk).
        assert rerun[0]["chunks_uploaded"] < rerun[0]["files"], (rerun, stored)
        assert done["commit"]["files"] == 80
    finally:
        two.stop()
    restored = cli("restore", store_url, "k", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(source, tmp_path / "restored")


def _wait_for_chunks(
    url: str, shard_of_chunk: dict[str, int], *, at_least: int, process: subprocess.Popen[str]
) -> int:
    """Wait until each of the 2 shards has stored ``at_least`` chunks (so the worker killed,
    whichever shard it runs, has stored some); how many are stored."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        chunks = _chunks(url)
        per_shard = [sum(shard_of_chunk.get(c) == k for c in chunks) for k in range(2)]
        if min(per_shard) >= at_least:
            return len(chunks)
        time.sleep(0.05)
    raise AssertionError("the shards never stored chunks")


def _chunks(url: str) -> list[str]:
    """The digests of the chunks in the store, read past our code."""
    if not url.startswith("s3://"):
        root = Path(url) / "chunks"
        return [p.name[:64] for p in root.iterdir()] if root.exists() else []
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/chunks/")
    return [o["Key"].rsplit("/", 1)[1][:64] for page in pages for o in page.get("Contents", [])]


def test_an_unreachable_scheduler_exits_2(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    result = cli(
        "backup", tmp_path, tmp_path / "s", "--name", "b", "--dask", address, "--shards", "2",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
