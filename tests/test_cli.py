"""The command line end to end, through a real subprocess: exit codes, output, and the store."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SMALL_CHUNK, assert_same_tree, make_tree, snapshot

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNINGS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def cli(*args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncbackup ARGS`` and capture what it says (stderr is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "asyncbackup", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )


def chunk_path(store: Path, data: bytes) -> Path:
    return store / "chunks" / hashlib.sha256(data).hexdigest()


def manifests(store: Path) -> list[Path]:
    return sorted((store / "backups").rglob("MANIFEST")) if (store / "backups").exists() else []


def list_json(store: Path | str, *, exit_code: int = EXIT_OK) -> list[dict[str, object]]:
    """``list --json``'s document; ``exit_code`` is 1 when a backup cannot be read."""
    result = cli("list", store, "--json")
    assert result.returncode == exit_code, result.stderr
    listing = json.loads(result.stdout)
    assert isinstance(listing, list)
    return listing


def small_files(root: Path, count: int) -> Path:
    """``count`` small distinct files in 30 directories (a few of them empty)."""
    for i in range(count):
        directory = root / f"d{i % 30:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:04d}.txt").write_text(f"file {i}\n" * (i % 40))
    return root


@dataclass(frozen=True)
class Backed:
    """A good backup named ``good`` of the sample tree, made once for the module: one object
    per chunk (packs off), since the tests below look at chunk objects and damage them; the
    same through packs is in test_packs.py."""

    source: Path
    store: Path
    metrics: Path
    backup: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory) -> Backed:
    base = tmp_path_factory.mktemp("cli")
    source, store, metrics = make_tree(base / "source"), base / "store", base / "backup.prom"
    result = cli(
        "backup", source, store, "--name", "good", "--chunk-size", "64K",
        "--metrics-file", metrics, "--pack-threshold", "0",
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    return Backed(source, store, metrics, result)


@pytest.fixture
def store_copy(backed: Backed, tmp_path: Path) -> Path:
    """A private copy of the good store, for tests that damage or change it."""
    return Path(shutil.copytree(backed.store, tmp_path / "store", symlinks=True))


def test_backup_prints_its_name_and_restore_reproduces_the_tree(
    backed: Backed, tmp_path: Path
) -> None:
    assert backed.backup.stdout == "good\n"
    assert "backup good committed: 13 files" in backed.backup.stderr
    big = (backed.source / "big.bin").read_bytes()
    for start in range(0, len(big), SMALL_CHUNK):  # 64K chunks: big.bin is four objects
        assert chunk_path(backed.store, big[start : start + SMALL_CHUNK]).is_file()
    assert [p.relative_to(backed.store).as_posix() for p in manifests(backed.store)] == [
        "backups/good/MANIFEST"
    ]

    target = tmp_path / "restored"
    result = cli("restore", backed.store, "good", target)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == ""
    assert_same_tree(backed.source, target)


def test_list_shows_the_backup_in_text_and_json(backed: Backed) -> None:
    text = cli("list", backed.store)
    assert text.returncode == EXIT_OK, text.stderr
    [line] = text.stdout.splitlines()
    assert line.startswith("good  ") and "13 files" in line and str(backed.source) in line

    want_bytes = sum(
        len(v[-1]) for v in snapshot(backed.source).values() if isinstance(v[-1], bytes)
    )
    [entry] = list_json(backed.store.as_uri())  # a file:// URL names the same store
    assert entry["name"] == "good"
    assert entry["files"] == 13
    assert entry["bytes"] == want_bytes
    assert entry["source"] == str(backed.source)
    assert entry["problem"] == ""


@pytest.mark.parametrize("deep", [False, True], ids=["presence", "deep"])
def test_verify_passes_on_a_good_backup(backed: Backed, deep: bool) -> None:
    result = cli("verify", backed.store, "good", *(["--deep"] if deep else []))
    assert result.returncode == EXIT_OK, result.stderr
    kind = "deep" if deep else "presence"
    assert re.search(rf"verify \({kind}\) of good: all \d+ chunks ok", result.stderr)


def test_delete_removes_the_backup_but_keeps_its_chunks(store_copy: Path, tmp_path: Path) -> None:
    chunks = sorted((store_copy / "chunks").iterdir())
    result = cli("delete", store_copy, "good")
    assert result.returncode == EXIT_OK, result.stderr
    assert list_json(store_copy) == []
    assert manifests(store_copy) == []
    assert sorted((store_copy / "chunks").iterdir()) == chunks  # a later prune removes them
    again = cli("restore", store_copy, "good", tmp_path / "restored")
    assert again.returncode == EXIT_FAILED
    assert "no backup named 'good'" in again.stderr


def test_metrics_file_is_prometheus_text_with_the_retry_counter(backed: Backed) -> None:
    text = backed.metrics.read_text()
    assert "# TYPE backup_retry_attempts_total counter" in text
    assert re.search(r'^backup_retry_attempts_total\{operation="backup"\} 0\.0$', text, re.M)
    assert re.search(
        r'^backup_last_success_timestamp_seconds\{operation="backup"\} \S+$', text, re.M
    )


def retries_in(metrics: Path, operation: str) -> float:
    pattern = rf'^backup_retry_attempts_total\{{operation="{operation}"\}} (\S+)$'
    match = re.search(pattern, metrics.read_text(), re.M)
    assert match, metrics.read_text()
    return float(match.group(1))


def test_many_files_survive_injected_faults_both_ways(tmp_path: Path) -> None:
    source = small_files(tmp_path / "source", 1500)
    store, metrics = tmp_path / "store", tmp_path / "backup.prom"
    # A short first backoff keeps the test quick; the faults and the retries are as in CI.
    fast = ("--inject-faults", "0.2", "--retry-delay", "0.01")
    # One object per file: 1,500 requests each way, so faults are sure to be drawn.
    backup = cli("backup", source, store, *fast, "--metrics-file", metrics, "--pack-threshold", "0")
    assert backup.returncode == EXIT_OK, backup.stderr[-3000:]
    name = backup.stdout.strip()
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}", name)  # the default name
    assert retries_in(metrics, "backup") > 0
    assert "WARNING retry: " in backup.stderr
    assert [e["name"] for e in list_json(store)] == [name]

    target = tmp_path / "restored"
    restore_metrics = tmp_path / "restore.prom"
    restore = cli("restore", store, name, target, *fast, "--metrics-file", restore_metrics)
    assert restore.returncode == EXIT_OK, restore.stderr[-3000:]
    assert retries_in(restore_metrics, "restore") > 0
    assert_same_tree(source, target)


def test_a_store_that_always_fails_commits_nothing(tree: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = cli(
        "backup", tree, store, "--name", "doomed", "--inject-faults", "1.0",
        "--max-retries", "2", "--retry-delay", "0.01",
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED
    assert "backup failed" in result.stderr and "injected fault" in result.stderr
    assert result.stdout == ""
    assert list_json(store) == []
    assert manifests(store) == []


def test_a_failed_backup_commits_nothing_and_a_rerun_completes(tree: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    failed = cli(
        "backup", tree, store, "--name", "b", "--chunk-size", "64K",
        "--inject-faults", "0.3", "--max-retries", "0",
    )  # fmt: skip
    assert failed.returncode == EXIT_FAILED
    assert "nothing was committed" in failed.stderr
    assert manifests(store) == []
    assert list_json(store) == []

    rerun = cli("backup", tree, store, "--name", "b", "--chunk-size", "64K")
    assert rerun.returncode == EXIT_OK, rerun.stderr
    assert rerun.stdout == "b\n"
    target = tmp_path / "restored"
    assert cli("restore", store, "b", target).returncode == EXIT_OK
    assert_same_tree(tree, target)


# Each case: the arguments ({src}, {store}, {tmp} filled in) and what stderr must say.
USAGE_ERRORS = {
    "unknown-scheme": (["backup", "{src}", "ftp://x"], "unknown store scheme 'ftp'"),
    "missing-source": (
        ["backup", "{tmp}/missing", "{store}", "--name", "other"],
        "does not exist or is not a directory",
    ),
    "name-exists": (["backup", "{src}", "{store}", "--name", "good"], "'good' exists already"),
    "invalid-name": (
        ["backup", "{src}", "{store}", "--name", "../x"],
        "invalid backup name '../x'",
    ),
    "chunk-size-unparsable": (
        ["backup", "{src}", "{store}", "--name", "other", "--chunk-size", "12Q"],
        "invalid size '12Q'",
    ),
    "chunk-size-too-small": (
        ["backup", "{src}", "{store}", "--name", "other", "--chunk-size", "1K"],
        "chunk size must be between 64 KiB and 1 GiB, not 1024 bytes",
    ),
    "fault-rate-above-one": (
        ["backup", "{src}", "{store}", "--name", "other", "--inject-faults", "1.5"],
        "a fault rate is between 0 and 1, not 1.5",
    ),
    "concurrency-zero": (
        ["backup", "{src}", "{store}", "--name", "other", "--concurrency", "0"],
        "concurrency must be between 1 and 1024, not 0",
    ),
    "restore-concurrency-zero": (
        ["restore", "{store}", "good", "{tmp}/target", "--concurrency", "0"],
        "concurrency must be between 1 and 1024, not 0",
    ),
    "negative-retries": (
        ["backup", "{src}", "{store}", "--name", "other", "--max-retries", "-1"],
        "max_attempts must be at least 1, not 0",
    ),
    "negative-retry-delay": (
        ["backup", "{src}", "{store}", "--name", "other", "--retry-delay", "-1"],
        "retry delays must satisfy 0 <= base_delay <= max_delay",
    ),
    "zero-attempt-timeout": (
        ["backup", "{src}", "{store}", "--name", "other", "--attempt-timeout", "0"],
        "attempt_timeout must be positive, not 0",
    ),
    "negative-retry-budget": (
        ["backup", "{src}", "{store}", "--name", "other", "--retry-budget", "-1"],
        "the retry budget and its refill must not be negative",
    ),
    "negative-latency": (
        ["backup", "{src}", "{store}", "--name", "other", "--inject-latency", "-5"],
        "--inject-latency must not be negative, not -5.0",
    ),
    "unknown-compression": (
        ["backup", "{src}", "{store}", "--name", "other", "--compression", "lz4"],
        "argument --compression: invalid choice: 'lz4'",
    ),
    "zstd-level-too-high": (
        ["backup", "{src}", "{store}", "--compression", "zstd", "--compression-level", "23"],
        "zstd compression level must be between 1 and 22, not 23",
    ),
    "level-without-codec": (
        ["backup", "{src}", "{store}", "--name", "other", "--compression-level", "5"],
        "a compression level needs a codec: add --compression zstd or gzip",
    ),
    "prune-keeps-nothing": (
        ["prune", "{store}"],
        "prune needs at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly, "
        "--keep-yearly or --keep-within above 0",
    ),
    "prune-negative-keep": (
        ["prune", "{store}", "--keep-last", "-1"],
        "--keep-last must not be negative, not -1",
    ),
    "prune-bad-grace": (
        ["prune", "{store}", "--keep-last", "1", "--grace", "5x"],
        "invalid duration '5x': use e.g. 0, 90s, 30m, 24h or 7d",
    ),
    "store-is-a-file": (["list", "{src}/empty"], "the store path exists and is not a directory"),
    "s3-without-bucket": (["list", "s3:///prefix"], "no bucket; write s3://BUCKET/optional/prefix"),
    "gs-prefix-with-dots": (["list", "gs://bucket/a/../b"], "the prefix has an empty, '.' or '..'"),
    "s3-option-on-gcs": (
        ["list", "gs://bucket/x", "--region", "us-east-1"],
        "--addressing-style, --storage-class and --sse apply to s3:// stores only",
    ),
    "s3-option-on-a-path": (
        ["list", "{store}", "--endpoint-url", "http://127.0.0.1:9000"],
        "--addressing-style, --storage-class and --sse apply to s3:// stores only",
    ),
    "s3-storage-class-on-a-path": (
        ["backup", "{src}", "{store}", "--name", "other", "--storage-class", "STANDARD_IA"],
        "--addressing-style, --storage-class and --sse apply to s3:// stores only",
    ),
    "glacier-storage-class": (
        ["backup", "{src}", "s3://bucket/x", "--storage-class", "DEEP_ARCHIVE"],
        "storage class 'DEEP_ARCHIVE' is not one a restore can read at once",
    ),
    "kms-key-without-kms": (
        ["backup", "{src}", "s3://bucket/x", "--sse", "AES256", "--sse-kms-key-id", "k"],
        "a KMS key id needs server-side encryption aws:kms",
    ),
    "endpoint-not-http": (
        ["list", "s3://bucket/x", "--endpoint-url", "127.0.0.1:9000"],
        "endpoint URL '127.0.0.1:9000' must start with http:// or https://",
    ),
    "pushgateway-not-http": (
        ["backup", "{src}", "{store}", "--name", "other", "--pushgateway", "ftp://gw:9091"],
        "--pushgateway 'ftp://gw:9091' is not a Pushgateway URL: use http://HOST:PORT",
    ),
    "pushgateway-without-scheme": (
        ["backup", "{src}", "{store}", "--name", "other", "--pushgateway", "gw:9091"],
        "--pushgateway 'gw:9091' is not a Pushgateway URL",
    ),
    "pushgateway-bad-port": (
        ["list", "{store}", "--pushgateway", "http://127.0.0.1:99999"],
        "--pushgateway 'http://127.0.0.1:99999' is not a Pushgateway URL",
    ),
    "pushgateway-with-query": (
        ["list", "{store}", "--pushgateway", "http://127.0.0.1:9091/?job=x"],
        "a Pushgateway URL has no query or fragment",
    ),
    "metrics-port-out-of-range": (
        ["backup", "{src}", "{store}", "--name", "other", "--metrics-port", "70000"],
        "--metrics-port must be between 0 and 65535, not 70000",
    ),
    "metrics-port-not-a-number": (
        ["list", "{store}", "--metrics-port", "http"],
        "argument --metrics-port: invalid int value: 'http'",
    ),
    "metrics-address-not-ours": (  # TEST-NET-1: no host has it, so binding fails at once
        ["list", "{store}", "--metrics-port", "0", "--metrics-address", "192.0.2.1"],
        "cannot serve metrics on 192.0.2.1 port 0: binding failed",
    ),
    "bwlimit-unparsable": (
        ["backup", "{src}", "{store}", "--name", "other", "--bwlimit", "fast"],
        "invalid rate 'fast': use bytes per second, e.g. 65536, 512K or 10M",
    ),
    "bwlimit-zero": (
        ["restore", "{store}", "good", "{tmp}/target", "--bwlimit", "0"],
        "invalid rate '0': it must be at least 1 byte per second",
    ),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_bad_usage_exits_2_with_a_clear_message_and_changes_nothing(
    case: str, backed: Backed, tmp_path: Path
) -> None:
    template, message = USAGE_ERRORS[case]
    args = [a.format(src=backed.source, store=backed.store, tmp=tmp_path) for a in template]
    before = snapshot(backed.store)
    result = cli(*args)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert snapshot(backed.store) == before
    assert not (tmp_path / "target").exists()


def test_restore_into_a_non_empty_dir_exits_2_and_touches_nothing(
    backed: Backed, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_bytes(b"mine")
    (target / "big.bin").write_bytes(b"also mine")  # a name the backup holds too
    before = snapshot(target)
    result = cli("restore", backed.store, "good", target)
    assert result.returncode == EXIT_USAGE
    assert f"restore target {target} is not empty" in result.stderr
    assert "--overwrite" in result.stderr
    assert snapshot(target) == before


def test_restore_of_an_unknown_backup_exits_1(backed: Backed, tmp_path: Path) -> None:
    target = tmp_path / "target"
    result = cli("restore", backed.store, "nosuch", target)
    assert result.returncode == EXIT_FAILED
    assert "no backup named 'nosuch'" in result.stderr
    assert not target.exists()


def test_verify_finds_a_corrupt_chunk_and_a_missing_one(backed: Backed, store_copy: Path) -> None:
    big = (backed.source / "big.bin").read_bytes()
    corrupt = chunk_path(store_copy, big[SMALL_CHUNK : 2 * SMALL_CHUNK])  # big.bin's 2nd chunk
    corrupt.write_bytes(bytes(SMALL_CHUNK))  # same size, other bytes

    shallow = cli("verify", store_copy, "good")
    assert shallow.returncode == EXIT_OK, shallow.stderr  # presence only: the object is there

    deep = cli("verify", store_copy, "good", "--deep")
    assert deep.returncode == EXIT_FAILED
    assert f"chunk {corrupt.name} is corrupt; it holds part of: big.bin" in deep.stderr
    assert "0 missing and 1 corrupt" in deep.stderr

    missing = chunk_path(store_copy, (backed.source / "sub/deeper/leaf.txt").read_bytes())
    missing.unlink()
    gone = cli("verify", store_copy, "good")
    assert gone.returncode == EXIT_FAILED
    assert f"chunk {missing.name} is missing; it holds part of: sub/deeper/leaf.txt" in gone.stderr


def test_listing_an_empty_or_missing_store_says_so(tmp_path: Path) -> None:
    result = cli("list", str(tmp_path / "no-store-here"))
    assert result.returncode == EXIT_FAILED, result.stderr
    assert result.stdout == ""
    assert f"no store at {tmp_path / 'no-store-here'}" in result.stderr
    assert not (tmp_path / "no-store-here").exists()  # listing never creates a store
