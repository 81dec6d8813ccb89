"""A hostile or damaged MANIFEST (issue 13, item 4): reading one is bounded, refused clearly with
the limit named, and `list` still shows every readable backup, with an exit code that says
something is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asyncbackup import BackupEngine, EngineConfig, ManifestTooLarge, MemoryStorage
from asyncbackup.config import DEFAULT_MAX_MANIFEST_SIZE
from asyncbackup.manifest import FileEntry, Manifest
from tests.remote import StoreUnderTest
from tests.test_cli import EXIT_FAILED, EXIT_OK, ROOT, cli

MiB = 1024 * 1024
RSS_LIMIT_MIB = 300


def hostile_manifest(path: Path, size: int) -> None:
    """A MANIFEST of ``size`` bytes in the layout asyncbackup writes, of tiny entries, as anyone
    who can write to the bucket could leave there (the issue's had ten million)."""
    head = {"format_version": 3, "name": "huge", "job_id": "x", "started": "s", "finished": "f",
            "host": "h", "source": "/", "chunk_size": 65536, "totals": {}}  # fmt: skip
    opening = (json.dumps(head, separators=(",", ":"))[:-1] + ',"entries":[\n').encode()
    block = b"".join(
        b'{"path":"d%07d","type":"dir","mode":493,"mtime_ns":0},\n' % i for i in range(20_000)
    )
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.write(opening)
        written = len(opening)
        while written + len(block) < size:
            f.write(block)
            written += len(block)
        f.write(b'{"path":"last","type":"dir","mode":493,"mtime_ns":0}\n]}\n')


def run_measured(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI under a fresh Python whose only child it is; its result and peak RSS (MiB)."""
    probe = (
        "import resource, subprocess, sys\n"
        "code = subprocess.run([sys.executable, '-m', 'asyncbackup', *sys.argv[1:]]).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(f'PEAK_KIB {peak}', file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_KIB ")]
    assert peak, result.stderr
    return result, int(peak[-1].split()[1]) / 1024


def test_a_500_mib_hostile_manifest_beside_a_good_backup(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.txt").write_text("kept\n")
    store = tmp_path / "store"
    assert cli("backup", source, store, "--name", "good").returncode == EXIT_OK
    huge = store / "backups" / "huge" / "MANIFEST"
    hostile_manifest(huge, 500 * MiB)
    try:
        listed, peak = run_measured("list", store)
        assert listed.returncode == EXIT_FAILED, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 2 and lines[0].startswith("good  ") and "1 files" in lines[0]
        limit = f"over the limit of {DEFAULT_MAX_MANIFEST_SIZE:,} bytes"
        assert lines[1].startswith("huge  PROBLEM: ") and limit in lines[1]
        assert "--max-manifest-size" in lines[1]
        assert "1 of 2 backups cannot be read: huge" in listed.stderr
        assert "Traceback" not in listed.stderr and "MemoryError" not in listed.stderr
        assert peak < RSS_LIMIT_MIB, f"list peaked at {peak:.0f} MiB"

        restored, peak = run_measured("restore", store, "huge", tmp_path / "target")
        assert restored.returncode == EXIT_FAILED
        assert f"backups/huge/MANIFEST: the MANIFEST is {huge.stat().st_size:,} bytes" in (
            restored.stderr
        )
        assert "Traceback" not in restored.stderr
        assert peak < RSS_LIMIT_MIB, f"restore peaked at {peak:.0f} MiB"
        assert not (tmp_path / "target").exists()

        good = cli("restore", store, "good", tmp_path / "good")  # the good one still restores
        assert good.returncode == EXIT_OK and (tmp_path / "good" / "f.txt").read_text() == "kept\n"
    finally:
        huge.unlink()  # 500 MiB: not left for pytest's kept temporary directories


async def test_the_limit_holds_on_s3_and_gcs_and_the_option_raises_it(
    remote: StoreUnderTest, tmp_path: Path
) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for root, files in ((small, 1), (big, 40)):
        root.mkdir()
        for i in range(files):
            (root / f"file-{i:02d}.txt").write_text(f"{i}\n")
    async with remote.store() as store:  # under the prefix c/
        engine = BackupEngine(store, EngineConfig(concurrency=4))
        await engine.backup(small, name="small")
        await engine.backup(big, name="big")
    sizes = {n: len(await remote.read(f"c/backups/{n}/MANIFEST")) for n in ("small", "big")}
    limit = (sizes["small"] + sizes["big"]) // 2
    assert sizes["small"] < limit < sizes["big"]
    url = remote.url("c/")

    listed = cli("list", url, "--max-manifest-size", str(limit))
    assert listed.returncode == EXIT_FAILED, listed.stderr
    lines = sorted(listed.stdout.splitlines())
    assert (
        lines[0].startswith("big  PROBLEM: ") and f"over the limit of {limit:,} bytes" in lines[0]
    )
    assert lines[1].startswith("small  ") and "PROBLEM" not in lines[1]
    refused = cli("restore", url, "big", tmp_path / "t", "--max-manifest-size", str(limit))
    assert refused.returncode == EXIT_FAILED
    assert f"the MANIFEST is {sizes['big']:,} bytes, over the limit of {limit:,}" in refused.stderr

    raised = cli("list", url, "--max-manifest-size", "1M")
    assert raised.returncode == EXIT_OK, raised.stderr
    assert "PROBLEM" not in raised.stdout and len(raised.stdout.splitlines()) == 2


async def test_a_manifest_replaced_by_a_larger_one_after_the_listing_is_refused() -> None:
    store = MemoryStorage()
    engine = BackupEngine(store, EngineConfig(max_manifest_size=4096))
    empty = Manifest(name="b", job_id="j", started="s", finished="f", host="h", source="/",
                     chunk_size=65536, entries=())  # fmt: skip
    store.objects["backups/b/MANIFEST"] = empty.to_json()
    assert (await engine.manifest("b")).name == "b"
    store.objects["backups/b/MANIFEST"] = empty.to_json() + b" " * 5000  # after a listing
    repo = engine._repository("verify")
    try:
        await repo.load_manifest("b", size=100)  # as listed before it was replaced
    except ManifestTooLarge as exc:
        assert "over the limit of 4,096 bytes" in str(exc)
    else:
        raise AssertionError("a MANIFEST longer than the limit was read")


def test_the_entry_by_entry_parse_reads_what_to_json_writes() -> None:
    entries = (
        FileEntry(".", "dir", 0o700, 1),
        FileEntry("a,b\n{c", "file", 0o644, 2, size=3, sha256="0" * 64, chunks=("1" * 64,)),
        FileEntry("d", "dir", 0o755, 3),
        FileEntry("d/l", "symlink", 0o777, 4, target="../a,b\n{c"),
    )
    manifest = Manifest(name="b", job_id="j", started="s", finished="f", host="h", source="/s",
                        chunk_size=65536, entries=entries)  # fmt: skip
    data = manifest.to_json()
    assert data.count(b"\n") == len(entries) + 2  # one line each: read line by line
    assert Manifest.from_json(data, where="x") == manifest
    edited = json.dumps(json.loads(data)).encode()  # one line, as a hand edit leaves it
    assert Manifest.from_json(edited, where="x") == manifest
