"""Shards, ``commit`` and restore by shards on Google Cloud Storage (fake-gcs-server), through
the command line, as docs/scaleout.md runs them; test_shards.py runs the same on the local
store and on moto. Small: the sample tree, three shards, no Dask."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from asyncbackup.layout import shard_key
from tests.conftest import assert_same_tree
from tests.remote import StoreUnderTest
from tests.servers import Server
from tests.test_cli import EXIT_FAILED, EXIT_OK, ROOT, cli
from tests.test_shards import SHARDS, keys, read_back, restore_command, run_shards


@pytest.fixture
def gcs(gcs_bucket: str, gcs_env: Server, monkeypatch: pytest.MonkeyPatch) -> StoreUnderTest:
    """A fresh bucket on fake-gcs-server; the CLI's subprocesses inherit the emulator's
    address."""
    return StoreUnderTest("gcs", gcs_bucket, monkeypatch, gcs_env)


def start_restore(url: str, target: Path, index: int) -> subprocess.Popen[str]:
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.Popen(
        restore_command(url, "b", target), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_shards_on_gcs_commit_only_when_whole_and_restore_identically(
    gcs: StoreUnderTest, tree: Path, tmp_path: Path
) -> None:
    url = gcs.url("repo")
    run_shards(tree, url, "b", [0, 2])

    # A record missing: refused, naming the shard, and nothing committed.
    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert "commit failed, nothing was committed" in refused.stderr
    assert "shard 1 has no record: it never ran" in refused.stderr
    assert keys(gcs, "repo/backups/") == []

    # A pack a record places chunks in, gone from the bucket: refused, naming it.
    run_shards(tree, url, "b", [1])
    record = read_back(gcs, f"repo/{shard_key('b', 1)}")
    lost = sorted(record.places.pack_sizes)[0]
    pack = asyncio.run(gcs.read(f"repo/packs/{lost}"))
    asyncio.run(gcs.delete(f"repo/packs/{lost}"))
    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert f"packs/{lost}, in which shard 1 (host " in refused.stderr
    assert "is not in the store" in refused.stderr
    assert keys(gcs, "repo/backups/") == []
    assert len([k for k in keys(gcs, "repo/shards/") if k.endswith(".record")]) == SHARDS

    asyncio.run(gcs.write(f"repo/packs/{lost}", pack))  # as the shard run again stores it
    done = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    assert keys(gcs, "repo/shards/") == []  # records and start markers removed
    assert {"repo/backups/b/INDEX", "repo/backups/b/MANIFEST"} <= set(keys(gcs, "repo/backups/"))
    restored = cli("restore", url, "b", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(tree, tmp_path / "restored")

    # Restore by shards, then the last step.
    target = tmp_path / "by-shards"
    processes = [start_restore(url, target, index) for index in range(SHARDS)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == EXIT_OK, err
    finish = cli("restore", url, "b", target, "--finish")
    assert finish.returncode == EXIT_OK, finish.stderr
    assert_same_tree(tree, target)
