"""One backup made by shard processes started by hand (as a Kubernetes Indexed Job starts
them), then ``commit``: on the local store and on S3 (moto), through the command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import msgspec
import pytest

from asyncbackup.errors import ConfigError
from asyncbackup.layout import shard_key, shard_packs_key
from asyncbackup.manifest import PACKED_FORMAT_VERSION, FileEntry, Manifest
from asyncbackup.packs import parse_pack
from asyncbackup.shard_records import ShardRecord, decode_record, encode_record
from asyncbackup.shards import ShardSpec, index_from_environment, shard_of
from tests.conftest import SMALL_CHUNK, assert_same_tree
from tests.remote import StoreUnderTest
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ROOT, cli

SHARDS = 3


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> StoreUnderTest:
    """A local directory, then a fresh bucket on moto (the CLI's subprocesses inherit the
    endpoint and credentials)."""
    if request.param == "local":
        return StoreUnderTest("local", str(tmp_path / "store-root"), monkeypatch)
    bucket: str = request.getfixturevalue("s3_bucket")
    return StoreUnderTest("s3", bucket, monkeypatch, request.getfixturevalue("s3_env"))


def shard_command(source: Path, url: str, name: str, *extra: str) -> list[str]:
    """Exactly the command docs/scaleout.md's Indexed Job runs in each pod."""
    return [
        sys.executable, "-m", "asyncbackup", "backup", str(source), url, "--name", name,
        "--shards", str(SHARDS), "--shard-index-env", "JOB_COMPLETION_INDEX",
        "--chunk-size", str(SMALL_CHUNK), *extra,
    ]  # fmt: skip


def start_shard(
    source: Path, url: str, name: str, index: int, *extra: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.Popen(
        shard_command(source, url, name, *extra), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def run_shards(source: Path, url: str, name: str, indexes: range | list[int], *extra: str) -> None:
    """Run the shards at once, as pods of an Indexed Job; each must succeed."""
    processes = [start_shard(source, url, name, i, *extra) for i in indexes]
    for index, process in zip(indexes, processes, strict=True):
        _, err = process.communicate(timeout=120)
        assert process.returncode == EXIT_OK, f"shard {index}: {err}"


def keys(store: StoreUnderTest, prefix: str) -> list[str]:
    return asyncio.run(store.keys(prefix))


def read_back(store: StoreUnderTest, key: str) -> ShardRecord:
    """The shard record at ``key``, read straight from the store and parsed."""
    return asyncio.run(decode_record(asyncio.run(store.read(key)), key=key, limit=2**30))


def test_shards_by_hand_then_commit_restore_identically(
    store: StoreUnderTest, tree: Path, tmp_path: Path
) -> None:
    url = store.url("repo")
    run_shards(tree, url, "nightly", range(SHARDS))
    records = [k for k in keys(store, "repo/shards/") if k.endswith(".record")]
    assert records == [f"repo/{shard_key('nightly', i)}" for i in range(SHARDS)]
    # A shard record is not a backup: nothing is listed, nothing restores yet.
    assert json.loads(cli("list", url, "--json").stdout) == []
    early = cli("restore", url, "nightly", tmp_path / "early")
    assert early.returncode == EXIT_FAILED and "no backup named 'nightly'" in early.stderr

    # Every entry was taken by exactly one shard: the records partition the tree.
    taken: dict[str, int] = {}
    for key in records:
        record = read_back(store, key)
        assert record.pid > 0 and record.host
        for entry in record.manifest.entries:
            assert entry.path not in taken
            taken[entry.path] = record.index
    assert len(set(taken.values())) == SHARDS  # each shard had work
    assert all(shard_of(path, SHARDS) == index for path, index in taken.items())

    kept = asyncio.run(store.read(records[0]))
    done = cli("commit", url, "--name", "nightly", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.strip() == "nightly"
    # A commit that stopped while removing the records: the next one finishes the removal.
    asyncio.run(store.write(records[0], kept))
    finished = cli("commit", url, "--name", "nightly", "--shards", str(SHARDS))
    assert finished.returncode == EXIT_OK, finished.stderr
    assert "was committed already" in finished.stderr
    assert keys(store, "repo/shards/") == []  # records and start markers removed
    listing = json.loads(cli("list", url, "--json").stdout)
    assert [(b["name"], b["host"], b["source"]) for b in listing] == [
        ("nightly", "(shards)", str(tree))
    ]
    restored = cli("restore", url, "nightly", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(tree, tmp_path / "restored")
    again = cli("commit", url, "--name", "nightly", "--shards", str(SHARDS))
    assert again.returncode == EXIT_OK and "was committed already" in again.stderr

    # The next sharded backup of this source takes it as its parent: nothing changed, so no
    # shard reads a file.
    unchanged = 0
    for index in range(SHARDS):
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index)}
        run = subprocess.run(
            [*shard_command(tree, url, "nightly-2"), "--json"], cwd=ROOT, env=env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert run.returncode == EXIT_OK, run.stderr
        shard = json.loads(run.stdout)["backup"]
        assert shard["parent"] == "nightly" and shard["bytes_read"] == 0, shard
        unchanged += shard["unchanged"]
    assert unchanged == sum(1 for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert cli("commit", url, "--name", "nightly-2", "--shards", str(SHARDS)).returncode == 0


def restore_command(url: str, name: str, target: Path) -> list[str]:
    """Exactly the command docs/scaleout.md's restore Indexed Job runs in each pod."""
    return [
        sys.executable, "-m", "asyncbackup", "restore", url, name, str(target),
        "--shards", str(SHARDS), "--shard-index-env", "JOB_COMPLETION_INDEX",
    ]  # fmt: skip


def test_a_restore_by_shards_then_finish_restores_identically(
    store: StoreUnderTest, tree: Path, tmp_path: Path
) -> None:
    url = store.url("repo")
    run_shards(tree, url, "b", range(SHARDS))
    assert cli("commit", url, "--name", "b", "--shards", str(SHARDS)).returncode == EXIT_OK
    target = tmp_path / "restored"
    envs = [{**os.environ, "JOB_COMPLETION_INDEX": str(i)} for i in range(SHARDS)]
    first = subprocess.run(
        restore_command(url, "b", target), cwd=ROOT, env=envs[0], capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert first.returncode == EXIT_OK, first.stderr
    early = cli("restore", url, "b", target, "--finish")
    assert early.returncode == EXIT_FAILED
    assert "a shard did not finish; run it again, then this step" in early.stderr
    processes = [
        subprocess.Popen(restore_command(url, "b", target), cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for env in envs[1:]
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == EXIT_OK, err
    finish = cli("restore", url, "b", target, "--finish")
    assert finish.returncode == EXIT_OK, finish.stderr
    assert_same_tree(tree, target)


def test_a_killed_shard_is_named_and_its_rerun_reuses_what_it_stored(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    """With chunk objects (``--pack-threshold 0``): a re-run reuses the chunk objects the dead
    attempt stored. (With packs: the next test.)"""
    source = tmp_path / "source"
    source.mkdir()
    for i in range(60):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(SMALL_CHUNK // 2) + bytes([i]))
    url = store.url("repo")
    objects = ("--pack-threshold", "0")
    run_shards(source, url, "b", [0, 2], *objects)
    # Shard 1 is slow (50 ms per store call, one transfer at a time): SIGKILL it once it
    # has started and stored some chunks.
    slow = start_shard(
        source, url, "b", 1, "--inject-latency", "50", "--concurrency", "1", *objects
    )
    deadline = time.monotonic() + 60
    marker = f"repo/{shard_key('b', 1, started=True)}"
    before = len(keys(store, "repo/chunks/"))
    while time.monotonic() < deadline:
        if marker in keys(store, "repo/shards/") and len(keys(store, "repo/chunks/")) > before + 2:
            break
        time.sleep(0.05)
    slow.send_signal(signal.SIGKILL)
    slow.communicate(timeout=30)
    stored_by_the_dead = len(keys(store, "repo/chunks/")) - before
    assert stored_by_the_dead > 2

    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert "shard 1 has no record: it started (" in refused.stderr
    assert f'"pid": {slow.pid}' in refused.stderr
    assert "nothing was committed" in refused.stderr
    assert keys(store, "repo/backups/") == []

    rerun = start_shard(source, url, "b", 1, *objects)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == EXIT_OK, err
    assert "(a re-run)" in err
    uploaded = int(err.split(" chunks uploaded")[0].rsplit(" ", 1)[1])
    mine = sum(1 for i in range(60) if shard_of(f"f{i:02d}.bin", SHARDS) == 1)
    assert uploaded <= mine - stored_by_the_dead  # what the dead attempt stored is reused
    done = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    restored = cli("restore", url, "b", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(source, tmp_path / "restored")


def test_a_killed_shard_that_packs_is_rerun_reusing_its_packs(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    """With packs (64 KiB, two 32 KiB files each): the re-run reuses the packs the dead
    attempt listed in ``<k>.packs`` (shard_packs.py), storing only the chunks of files no
    listed pack holds."""
    source = tmp_path / "source"
    source.mkdir()
    for i in range(60):
        (source / f"f{i:02d}.bin").write_bytes(os.urandom(SMALL_CHUNK // 2) + bytes([i]))
    url = store.url("repo")
    packs = ("--pack-size", str(SMALL_CHUNK))
    run_shards(source, url, "b", [0, 2], *packs)
    slow = start_shard(
        source, url, "b", 1, "--inject-latency", "50", "--concurrency", "1", *packs
    )  # fmt: skip
    listed = f"repo/{shard_packs_key('b', 1)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if listed in keys(store, "repo/shards/") and len(asyncio.run(store.read(listed))) > 65:
            break  # it listed two packs or more
        time.sleep(0.05)
    slow.send_signal(signal.SIGKILL)
    slow.communicate(timeout=30)
    dead_packs = asyncio.run(store.read(listed)).decode().split()
    dead_chunks = sum(
        len(parse_pack(asyncio.run(store.read(f"repo/packs/{p}")), where=p)) for p in dead_packs
    )
    assert len(dead_packs) >= 2 and dead_chunks >= 4

    rerun = start_shard(source, url, "b", 1, *packs)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == EXIT_OK, err
    assert f"reusing {len(dead_packs)} packs ({dead_chunks} chunks) an earlier attempt" in err
    uploaded = int(err.split(" chunks uploaded")[0].rsplit(" ", 1)[1])
    mine = sum(1 for i in range(60) if shard_of(f"f{i:02d}.bin", SHARDS) == 1)
    assert uploaded == mine - dead_chunks
    record = read_back(store, f"repo/{shard_key('b', 1)}")
    assert set(dead_packs) <= set(record.places.pack_sizes)
    done = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    restored = cli("restore", url, "b", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(source, tmp_path / "restored")


def test_a_missing_shard_is_refused_naming_it(store: StoreUnderTest, tree: Path) -> None:
    url = store.url("repo")
    run_shards(tree, url, "b", [0, 2])
    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert "commit failed, nothing was committed" in refused.stderr
    assert "shard 1 has no record: it never ran" in refused.stderr
    assert keys(store, "repo/backups/") == []
    assert len([k for k in keys(store, "repo/shards/") if k.endswith(".record")]) == 2


def test_a_tampered_record_is_refused(store: StoreUnderTest, tree: Path, tmp_path: Path) -> None:
    url = store.url("repo")
    run_shards(tree, url, "b", range(SHARDS))
    key = f"repo/{shard_key('b', 1)}"
    original = asyncio.run(store.read(key))
    record = asyncio.run(decode_record(original, key=key, limit=2**30))
    other = read_back(store, f"repo/{shard_key('b', 0)}")
    moved = next(e for e in other.manifest.entries if e.type == "file")
    free = next(p for p in (f"new-{i}" for i in range(99)) if shard_of(p, SHARDS) == 1)
    lost = msgspec.structs.replace(moved, path=free, chunks=("0" * 64, *moved.chunks[1:]))

    def rewritten(entries: tuple[FileEntry, ...]) -> bytes:
        """The record with ``entries``, its sha256 recomputed: an edit made with care."""
        manifest = replace(record.manifest, entries=tuple(sorted(entries, key=lambda e: e.path)))
        return encode_record(
            manifest, index=1, count=SHARDS, options=record.options, worker="", written="x"
        )

    cases = {
        "flipped byte": original[:-3] + bytes([original[-3] ^ 1]) + original[-2:],
        "a path of shard 0": rewritten((*record.manifest.entries, moved)),
        "a chunk not stored": rewritten((*record.manifest.entries, lost)),
    }
    expected = {
        "flipped byte": "does not match the sha256 and length its head gives",
        "a path of shard 0": "which belongs to shard 0: the record was edited or damaged",
        "a chunk not stored": f"chunk {'0' * 64} of '{lost.path}' (shard 1,",
    }
    for case, data in cases.items():
        asyncio.run(store.write(key, data))
        refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
        assert refused.returncode == EXIT_FAILED, case
        assert expected[case] in refused.stderr, (case, refused.stderr)
        assert keys(store, "repo/backups/") == [], case
    asyncio.run(store.write(key, original))  # the record as the shard wrote it commits
    done = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    assert cli("restore", url, "b", tmp_path / "restored").returncode == EXIT_OK
    assert_same_tree(tree, tmp_path / "restored")


def test_shards_run_with_other_options_are_refused(store: StoreUnderTest, tree: Path) -> None:
    url = store.url("repo")
    run_shards(tree, url, "b", [0, 1])
    run_shards(tree, url, "b", [2], "--compression", "zstd")
    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert "shards/b/2.record: its options differ from shard 0's: compression" in refused.stderr


def test_prune_keeps_the_chunks_shard_records_name(
    store: StoreUnderTest, tree: Path, tmp_path: Path
) -> None:
    """Between a shard's end and the commit no lock protects its chunks and packs: prune must
    keep them, and repack none of the packs (``--max-unused 0`` would repack any waste)."""
    url = store.url("repo")
    run_shards(tree, url, "b", range(SHARDS))
    chunks, packs = keys(store, "repo/chunks/"), keys(store, "repo/packs/")
    assert packs  # the tree's small files were packed
    pruned = cli("prune", url, "--keep-last", "1", "--grace", "0s", "--max-unused", "0")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert keys(store, "repo/chunks/") == chunks  # no MANIFEST names them, records do
    assert keys(store, "repo/packs/") == packs
    assert cli("commit", url, "--name", "b", "--shards", str(SHARDS)).returncode == EXIT_OK
    assert cli("restore", url, "b", tmp_path / "restored").returncode == EXIT_OK
    assert_same_tree(tree, tmp_path / "restored")


def test_an_abandoned_record_is_removed_by_prune_and_commit_then_refuses(
    tree: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    run_shards(tree, str(store), "b", range(SHARDS))
    old = time.time() - 8 * 24 * 3600  # past RECORD_EXPIRY (7 days)
    for path in (store / "shards" / "b").iterdir():
        if path.name.startswith("1."):
            os.utime(path, (old, old))
    pruned = cli("prune", store, "--keep-last", "1", "--grace", "0s")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert "shards/b/1.record was written 8.0 days ago and never committed: abandoned" in (
        pruned.stderr
    )
    assert sorted(p.name for p in (store / "shards" / "b").iterdir()) == [
        "0.packs", "0.record", "0.started", "2.packs", "2.record", "2.started",
    ]  # fmt: skip
    refused = cli("commit", store, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED and "shard 1 has no record" in refused.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "3/3"], {}, "shard index 3 is out of range for 3 shards"),
        (["--shard", "a/3"], {}, "--shard 'a/3': give K/N"),
        (["--shards", "3"], {}, "--shards N needs --shard-index-env VAR"),
        (["--shards", "4", "--shard-index-env", "SLURM_ARRAY_TASK_ID"],
         {"SLURM_ARRAY_TASK_ID": "4"},
         "SLURM_ARRAY_TASK_ID=4: shard index 4 is out of range for 4 shards: shards are "
         "numbered 0 to 3 (a Slurm array must count from 0: --array=0-3)"),
        (["--shards", "2", "--shard-index-env", "JOB_COMPLETION_INDEX"], {},
         "--shard-index-env JOB_COMPLETION_INDEX: the variable is not set"),
        (["--shard", "0/2", "--shards", "2"], {}, "--shard K/N names one shard"),
    ],
)  # fmt: skip
def test_bad_shard_options_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("JOB_COMPLETION_INDEX",)}
    result = subprocess.run(
        [sys.executable, "-m", "asyncbackup", "backup", str(source), str(tmp_path / "s"),
         "--name", "b", *args],
        cwd=ROOT, env={**environ, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr


def test_a_sharded_backup_needs_a_name(tmp_path: Path) -> None:
    result = cli("backup", tmp_path, tmp_path / "s", "--shard", "0/2")
    assert result.returncode == EXIT_USAGE
    assert "a sharded backup needs --name" in result.stderr


def test_every_path_belongs_to_exactly_one_shard() -> None:
    paths = [f"dir{i % 7}/file {i}" for i in range(3000)] + [".", "naïve", "\udcff-bytes"]
    for count in (1, 2, 5):
        owners = [shard_of(p, count) for p in paths]
        assert all(0 <= o < count for o in owners)
        shares = [owners.count(k) / len(paths) for k in range(count)]
        assert min(shares) > 0.8 / count  # by count, near even
    assert ShardSpec.parse("2/5") == ShardSpec(2, 5)
    with pytest.raises(ConfigError, match="out of range"):
        index_from_environment("I", 2, {"I": "2"})


async def test_concurrent_deletes_in_one_local_directory_all_succeed(tmp_path: Path) -> None:
    """Each delete removes the directory it leaves empty: two at once must not fail."""
    from asyncbackup import LocalStorage

    async with LocalStorage(tmp_path / "s") as local:
        for round_ in range(20):
            names = [f"d{round_}/k{i}" for i in range(8)]
            for name in names:
                await local.put(name, b"x")
            await asyncio.gather(*(local.delete(n) for n in names))
            assert not (tmp_path / "s" / f"d{round_}").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "{store}", "b", "{target}", "--shard", "0/2", "--delete"],
         "a restore by shards restores every file"),
        (["restore", "{store}", "b", "{target}", "--finish", "--shard", "0/2"],
         "--finish is the last step"),
        (["backup", "{source}", "{store}", "--name", "c", "--dask", "tcp://127.0.0.1:1",
          "--shard", "0/2"], "--dask runs every shard"),
        (["backup", "{source}", "{store}", "--name", "c", "--dask", "tcp://127.0.0.1:1"],
         "--dask needs --shards N"),
        (["backup", "-", "{store}", "--name", "c", "--shard", "0/2"],
         "a backup from standard input ('-') cannot be split into shards"),
    ],
)  # fmt: skip
def test_bad_combinations_with_shards_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f").write_text("x")
    store = tmp_path / "store"
    assert cli("backup", source, store, "--name", "b").returncode == EXIT_OK
    values = {"store": str(store), "target": str(tmp_path / "t"), "source": str(source)}
    result = cli(*(a.format(**values) for a in args))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "t").exists()


def test_a_sharded_backup_of_many_small_files_packs_them(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    """300 small files in 3 shards: a few packs, not 300 chunk objects; the records carry the
    places, the commit writes the merged INDEX and a format 4 MANIFEST, restore is identical."""
    source = tmp_path / "source"
    for i in range(300):
        (source / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (source / f"d{i % 7}" / f"f{i:03d}.txt").write_bytes(os.urandom(100 + i))
    url = store.url("repo")
    run_shards(source, url, "small", range(SHARDS))
    assert keys(store, "repo/chunks/") == []
    packs = keys(store, "repo/packs/")
    assert 1 <= len(packs) <= SHARDS  # one partly filled pack per shard at most
    placed = 0
    for index in range(SHARDS):
        key = f"repo/{shard_key('small', index)}"
        record = read_back(store, key)
        assert record.manifest.refs() == set(record.places.places)  # every chunk packed
        assert {f"repo/packs/{p}" for p in record.places.pack_sizes} <= set(packs)
        placed += len(record.places)
    assert placed >= 300
    assert keys(store, "repo/backups/") == []  # no INDEX before the commit
    done = cli("commit", url, "--name", "small", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    assert "repo/backups/small/INDEX" in keys(store, "repo/backups/")
    head = Manifest.from_json(asyncio.run(store.read("repo/backups/small/MANIFEST")), where="")
    assert head.format_version == PACKED_FORMAT_VERSION
    restored = cli("restore", url, "small", tmp_path / "restored")
    assert restored.returncode == EXIT_OK, restored.stderr
    assert_same_tree(source, tmp_path / "restored")
    verified = cli("verify", url, "small", "--deep")
    assert verified.returncode == EXIT_OK, verified.stderr


def test_a_record_whose_pack_is_missing_is_refused_naming_it(
    store: StoreUnderTest, tree: Path, tmp_path: Path
) -> None:
    url = store.url("repo")
    run_shards(tree, url, "b", range(SHARDS))
    key = f"repo/{shard_key('b', 2)}"
    record = read_back(store, key)
    lost = sorted(record.places.pack_sizes)[0]
    pack = asyncio.run(store.read(f"repo/packs/{lost}"))
    asyncio.run(store.delete(f"repo/packs/{lost}"))
    refused = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert refused.returncode == EXIT_FAILED
    assert "commit failed, nothing was committed" in refused.stderr
    assert f"packs/{lost}, in which shard 2 (host " in refused.stderr
    assert "is not in the store" in refused.stderr
    assert keys(store, "repo/backups/") == []  # neither MANIFEST nor INDEX
    asyncio.run(store.write(f"repo/packs/{lost}", pack))  # the shard run again would store it
    done = cli("commit", url, "--name", "b", "--shards", str(SHARDS))
    assert done.returncode == EXIT_OK, done.stderr
    assert cli("restore", url, "b", tmp_path / "restored").returncode == EXIT_OK
    assert_same_tree(tree, tmp_path / "restored")


def test_packs_a_record_reuses_from_a_deleted_backup_survive_prune(
    tree: Path, tmp_path: Path
) -> None:
    """Backup b's shards reuse the packs of their parent a; a is deleted and prune runs before
    b's commit: the packs b's records name are kept (no committed backup names them), and b
    then restores."""
    store = tmp_path / "store"
    run_shards(tree, str(store), "a", range(SHARDS))
    assert cli("commit", store, "--name", "a", "--shards", str(SHARDS)).returncode == EXIT_OK
    packs = sorted(p.name for p in (store / "packs").rglob("*") if p.is_file())
    run_shards(tree, str(store), "b", range(SHARDS))  # nothing changed: a's places are reused
    assert sorted(p.name for p in (store / "packs").rglob("*") if p.is_file()) == packs
    assert cli("delete", store, "a").returncode == EXIT_OK
    pruned = cli("prune", store, "--keep-last", "1", "--grace", "0s", "--max-unused", "0")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert sorted(p.name for p in (store / "packs").rglob("*") if p.is_file()) == packs
    assert cli("commit", store, "--name", "b", "--shards", str(SHARDS)).returncode == EXIT_OK
    assert cli("restore", store, "b", tmp_path / "restored").returncode == EXIT_OK
    assert_same_tree(tree, tmp_path / "restored")
