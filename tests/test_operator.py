"""The operator's view through the real command line: /metrics scraped while a job runs, the
Pushgateway push when it ends (failed or not), the summary lines, list --json and show."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from datetime import datetime
from pathlib import Path

import pytest

from asyncbackup.manifest_encoding import decode
from tests.conftest import make_tree, snapshot
from tests.pushgateway import PushReceiver, Samples, parse_samples, scrape, value
from tests.test_cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ROOT,
    cli,
    list_json,
    small_files,
)


def file_bytes(root: Path) -> int:
    return sum(len(v[-1]) for v in snapshot(root).values() if isinstance(v[-1], bytes))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """``python -m asyncbackup ARGS`` in the background, its stderr read line by line."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncbackup", *map(str, args)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # SIGINT as at a terminal, whatever the test runner inherited (a shell starts its
            # background jobs with SIGINT ignored)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            assert self.proc.poll() is None or self._reader.is_alive(), "".join(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"no line matched {pattern!r}: {''.join(self.lines)}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        # Not communicate(): it would read stderr too, racing the reader thread for the last lines.
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with self.proc.stdout:
            out = self.proc.stdout.read()  # a few lines at most: the pipe never filled
        self._reader.join(timeout=5)
        self.proc.stderr.close()
        return self.proc.returncode, out, "".join(self.lines)


def test_metrics_are_served_while_a_backup_runs_and_pushed_when_it_ends(tmp_path: Path) -> None:
    source = small_files(tmp_path / "source", 120)
    store, textfile = tmp_path / "store", tmp_path / "backup.prom"
    with PushReceiver() as gateway:
        # 120 uploads of 100 ms, 4 at a time: about 3 s, so scrapes land mid-job.
        job = Running(
            "backup", source, store, "--name", "live", "--concurrency", "4",
            "--inject-latency", "100", "--metrics-port", "0", "--metrics-file", textfile,
            "--pushgateway", gateway.url, "--pack-threshold", "0",  # an upload per file
        )  # fmt: skip
        url = job.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)").group(1)
        during: list[Samples] = []
        while job.proc.poll() is None:
            try:
                during.append(scrape(url))
            except (urllib.error.URLError, ConnectionError):
                break  # the job ended between the poll and the scrape
            time.sleep(0.1)
        code, out, err = job.finish()
    assert code == EXIT_OK, err
    assert out == "live\n"

    def done(s: Samples) -> float:
        return value(s, "backup_files_total", operation="backup", outcome="done") or 0

    def sent(s: Samples) -> float:
        return value(s, "backup_bytes_total", operation="backup", outcome="transferred") or 0

    files, total = 120, file_bytes(source)
    midway = [s for s in during if 0 < done(s) < files]
    assert len(midway) >= 3, f"only {len(midway)} of {len(during)} scrapes caught the job midway"
    assert [sent(s) for s in during] == sorted(sent(s) for s in during)  # it only rises
    assert len({sent(s) for s in midway}) >= 3  # and it rose while we watched
    assert max(value(s, "backup_inflight_transfers", operation="backup") or 0 for s in during) > 0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(url)  # the server went away with the job

    [pushed] = gateway.received
    assert pushed.method == "POST"
    assert pushed.path == f"/metrics/job/asyncbackup/command/backup/instance/{socket.gethostname()}"
    assert pushed.content_type.startswith("text/plain")
    for final in (pushed.samples, parse_samples(textfile.read_text())):
        assert done(final) == files
        assert sent(final) == total
        assert value(final, "backup_retry_attempts_total", operation="backup") == 0
        assert value(final, "backup_inflight_transfers", operation="backup") == 0
        last = value(final, "backup_last_success_timestamp_seconds", operation="backup")
        assert last is not None and abs(last - time.time()) < 120


def test_a_failed_job_still_pushes_its_failure_and_no_success_time(
    tree: Path, tmp_path: Path
) -> None:
    with PushReceiver() as gateway:
        result = cli(
            "backup", tree, tmp_path / "store", "--name", "doomed", "--inject-faults", "1.0",
            "--max-retries", "2", "--retry-delay", "0.01", "--pushgateway", gateway.url,
            "--push-job", "nightly-db",
        )  # fmt: skip
    assert result.returncode == EXIT_FAILED, result.stderr
    [pushed] = gateway.received
    assert pushed.path.startswith("/metrics/job/nightly-db/command/backup/")
    samples = pushed.samples
    assert (value(samples, "backup_files_total", operation="backup", outcome="failed") or 0) >= 1
    assert (value(samples, "backup_retry_attempts_total", operation="backup") or 0) >= 2
    assert value(samples, "backup_duration_seconds", operation="backup") is not None
    # Absent from the body, so a POST leaves the Pushgateway's last success time as it was.
    assert "backup_last_success_timestamp_seconds" not in pushed.body


@pytest.mark.parametrize("gateway_answer", ["refused", "500"])
def test_monitoring_down_warns_and_the_backup_still_succeeds(
    tree: Path, tmp_path: Path, gateway_answer: str
) -> None:
    store = tmp_path / "store"
    if gateway_answer == "refused":
        result = cli("backup", tree, store, "--name", "b", "--pushgateway",
                     f"http://127.0.0.1:{closed_port()}")  # fmt: skip
    else:
        with PushReceiver(status=500) as gateway:
            result = cli("backup", tree, store, "--name", "b", "--pushgateway", gateway.url)
        assert len(gateway.received) == 1
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == "b\n"
    assert "WARNING could not push metrics to the Pushgateway" in result.stderr
    assert "the job's outcome stands" in result.stderr
    assert [e["name"] for e in list_json(store)] == ["b"]


def test_a_metrics_port_in_use_is_a_usage_error_before_anything_runs(
    tree: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("backup", tree, tmp_path / "store", "--metrics-port", str(port))
    assert result.returncode == EXIT_USAGE
    assert f"cannot serve metrics on 127.0.0.1 port {port}: binding is in use" in result.stderr
    assert not (tmp_path / "store").exists()


SUMMARY_BACKUP = re.compile(
    r"backup (?P<name>\S+) committed: (?P<files>\d+) files \((?P<unchanged>\d+) unchanged"
    r"(, no parent| since (?P<parent>\S+))\), (?P<dirs>\d+) dirs, (?P<links>\d+) links, "
    r"(?P<skipped>\d+) skipped; (?P<read>[\d.]+) MiB of (?P<bytes>[\d.]+) MiB read, "
    r"(?P<uploaded>\d+) chunks "
    r"uploaded \((?P<sent>[\d.]+) MiB\), (?P<stored>\d+) already stored; (?P<retries>\d+) "
    r"retries; (?P<seconds>[\d.]+)s, (?P<rate>[\d.]+) MiB/s"
)
SUMMARY_RESTORE = re.compile(
    r"restored (?P<name>\S+) into (?P<target>.+): (?P<files>\d+) files, (?P<dirs>\d+) dirs, "
    r"(?P<links>\d+) links, (?P<bytes>[\d.]+) MiB; (?P<chunks>\d+) chunks downloaded; "
    r"(?P<retries>\d+) retries; (?P<seconds>[\d.]+)s, (?P<rate>[\d.]+) MiB/s"
)


def test_summary_lines_state_what_each_job_did(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    store = tmp_path / "store"
    first = cli("backup", source, store, "--name", "one", "--chunk-size", "64K")
    (source / "new.txt").write_text("one more file\n")
    second = cli("backup", source, store, "--name", "two", "--chunk-size", "64K",
                 "--inject-faults", "0.5", "--retry-delay", "0.01")  # fmt: skip
    assert first.returncode == second.returncode == EXIT_OK, second.stderr
    one = SUMMARY_BACKUP.search(first.stderr)
    two = SUMMARY_BACKUP.search(second.stderr)
    assert one and two, first.stderr + second.stderr
    # make_tree: 13 files, 5 dirs, 3 links; 16 chunks of 64K, one of them a duplicate.
    assert (one["name"], one["files"], one["dirs"], one["links"]) == ("one", "13", "5", "3")
    assert (one["uploaded"], one["stored"], one["retries"]) == ("15", "1", "0")
    assert float(one["read"]) == float(one["bytes"]) == round(file_bytes(source) / 2**20, 1)
    assert (one["unchanged"], one["parent"]) == ("0", None)
    # The second backup reads and uploads only the new file; the rest is unchanged since one.
    assert (two["files"], two["uploaded"], two["stored"]) == ("14", "1", "16")
    assert (two["unchanged"], two["parent"], two["read"]) == ("13", "one", "0.0")
    assert int(two["retries"]) > 0
    assert float(two["seconds"]) > 0 and float(two["rate"]) >= 0

    restore = cli("restore", store, "two", tmp_path / "out", "--inject-faults", "0.3",
                  "--retry-delay", "0.01")  # fmt: skip
    assert restore.returncode == EXIT_OK, restore.stderr
    r = SUMMARY_RESTORE.search(restore.stderr)
    assert r, restore.stderr
    assert (r["name"], r["target"]) == ("two", str(tmp_path / "out"))
    # 17 chunk uses, 16 downloads: dup-a.bin and dup-b.bin share one chunk, fetched once.
    assert (r["files"], r["dirs"], r["links"], r["chunks"]) == ("14", "5", "3", "16")
    assert int(r["retries"]) > 0
    assert float(r["bytes"]) == round(file_bytes(source) / 2**20, 1)


def test_list_json_gives_a_script_every_fact_of_each_backup(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "source")
    store = tmp_path / "store"
    for name in ("a", "b"):
        assert cli("backup", source, store, "--name", name, "--chunk-size", "64K").returncode == 0
    (store / "backups" / "c").mkdir()
    (store / "backups" / "c" / "MANIFEST").write_text("{not json")
    listing = list_json(store, exit_code=EXIT_FAILED)  # every backup listed; one is bad
    assert [e["name"] for e in listing] == ["a", "b", "c"]
    a, _, c = listing
    assert set(a) == {
        "name", "started", "finished", "host", "source", "files", "bytes", "chunks", "tags",
        "problem", "parent", "format_version",
    }  # fmt: skip
    started, finished = (datetime.fromisoformat(str(a[k])) for k in ("started", "finished"))
    assert started.utcoffset() is not None and started <= finished
    assert abs(finished.timestamp() - time.time()) < 300
    assert (a["host"], a["source"]) == (socket.gethostname(), str(source))
    assert (a["files"], a["bytes"], a["chunks"], a["problem"]) == (13, file_bytes(source), 15, "")
    assert c["problem"] and "not valid JSON" in str(c["problem"])


def test_show_describes_one_backup_for_a_script_and_for_a_person(
    tree: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    assert cli("backup", tree, store, "--name", "one", "--chunk-size", "64K").returncode == 0
    manifest = json.loads(decode((store / "backups" / "one" / "MANIFEST").read_bytes(), where="t"))

    as_json = cli("show", store, "one", "--json")
    assert as_json.returncode == EXIT_OK, as_json.stderr
    doc = json.loads(as_json.stdout)
    for key in ("name", "format_version", "job_id", "started", "finished", "host", "source",
                "chunk_size", "totals", "entries"):  # fmt: skip
        assert doc[key] == manifest[key], key
    assert doc["format_version"] == 4  # owners are recorded; its small chunks are packed
    assert doc["totals"] == {"files": 13, "dirs": 5, "symlinks": 3, "bytes": file_bytes(tree),
                             "chunks": 16, "unique_chunks": 15}  # fmt: skip
    assert 0 <= doc["seconds"] < 60
    big = next(e for e in doc["entries"] if e["path"] == "big.bin")
    assert big["size"] == len((tree / "big.bin").read_bytes()) and len(big["chunks"]) == 4

    text = cli("show", store.as_uri(), "one", "--files")
    assert text.returncode == EXIT_OK, text.stderr
    lines = text.stdout.splitlines()
    assert "name            one" in lines
    assert f"source          {tree}" in lines
    assert f"files           13 ({file_bytes(tree):,} bytes)" in lines
    assert "chunks          16 (15 unique)" in lines
    assert "format version  4" in lines
    assert "compression     none" in lines
    assert any(re.fullmatch(r"-rwxr-x--- +18 \S+ \S+  script\.sh", line) for line in lines)
    assert any(line.endswith("  link-to-leaf -> sub/deeper/leaf.txt") for line in lines)
    assert any(line.endswith("  sub/line\\nbreak") for line in lines)  # one line per entry
    assert any(line.endswith("  sub/bytes-\\xff\\xfe/latin-\\xe9.txt") for line in lines)
    assert "warnings        0" in lines
    # The summary (with tags and parent), a blank line, 13 files, 5 dirs and the root (.),
    # 3 links.
    assert len(lines) == 16 + 1 + 22
    assert "tags            -" in lines

    summary_only = cli("show", store, "one")
    assert summary_only.stdout.splitlines() == lines[:16]


def test_show_says_how_many_chunks_a_compressed_backup_stores_compressed(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "text.log").write_text("the same line, again and again\n" * 10_000)
    (source / "noise.bin").write_bytes(os.urandom(100_000))  # does not shrink: stored raw
    store = tmp_path / "store"
    backup = cli(  # one object per chunk (packs off): the keys say how each is stored
        "backup", source, store, "--name", "z", "--compression", "zstd", "--pack-threshold", "0"
    )
    assert backup.returncode == EXIT_OK, backup.stderr
    stored = sorted(p.name for p in (store / "chunks").iterdir())
    assert [name.endswith(".zst") for name in stored].count(True) == 1

    lines = cli("show", store, "z").stdout.splitlines()
    assert "compression     zstd (1 of 2 chunks compressed)" in lines
    doc = json.loads(cli("show", store, "z", "--json").stdout)
    assert (doc["compression"], doc["compressed_chunks"]) == ("zstd", 1)


def test_show_of_a_missing_backup_exits_1_and_says_what_to_do(tmp_path: Path) -> None:
    made = cli("backup", small_files(tmp_path / "source", 3), tmp_path / "store", "--name", "b")
    assert made.returncode == EXIT_OK, made.stderr
    result = cli("show", tmp_path / "store", "nosuch", "--json")
    assert result.returncode == EXIT_FAILED
    assert "no backup named 'nosuch'" in result.stderr
    assert "'asyncbackup list' shows them" in result.stderr
    assert result.stdout == ""


def test_on_s3_the_push_and_show_agree_with_the_backup(s3_bucket: str, tmp_path: Path) -> None:
    source = small_files(tmp_path / "source", 100)
    url = f"s3://{s3_bucket}/ops"
    with PushReceiver() as gateway:
        backup = cli(
            "backup", source, url, "--name", "b", "--pushgateway", gateway.url,
            "--bwlimit", "64M", "--inject-faults", "0.1", "--retry-delay", "0.01",
        )  # fmt: skip
        assert backup.returncode == EXIT_OK, backup.stderr[-3000:]
        restore = cli("restore", url, "b", tmp_path / "out", "--pushgateway", gateway.url)
        assert restore.returncode == EXIT_OK, restore.stderr[-3000:]
    summary = SUMMARY_BACKUP.search(backup.stderr)
    assert summary, backup.stderr[-3000:]
    pushed_backup, pushed_restore = gateway.received
    assert "/command/backup/" in pushed_backup.path and "/command/restore/" in pushed_restore.path
    b, r = pushed_backup.samples, pushed_restore.samples
    assert value(b, "backup_files_total", operation="backup", outcome="done") == 100
    assert value(b, "backup_chunks_total", operation="backup", outcome="transferred") == int(
        summary["uploaded"]
    )
    assert value(b, "backup_retry_attempts_total", operation="backup") == int(summary["retries"])
    assert int(summary["retries"]) > 0
    assert value(r, "backup_bytes_total", operation="restore", outcome="transferred") == (
        file_bytes(source)
    )
    assert value(r, "backup_files_total", operation="restore", outcome="done") == 100

    shown = json.loads(cli("show", url, "b", "--json").stdout)
    assert shown["totals"]["files"] == 100 and shown["totals"]["bytes"] == file_bytes(source)
    assert shown["source"] == str(source)


def test_an_interrupted_job_still_pushes_and_closes_its_port(tmp_path: Path) -> None:
    source = small_files(tmp_path / "source", 300)
    with PushReceiver() as gateway:
        job = Running(
            "backup", source, tmp_path / "store", "--inject-latency", "200",
            "--metrics-port", "0", "--pushgateway", gateway.url,
            "--pack-threshold", "0",  # an upload per file: the job is long enough to stop
        )  # fmt: skip
        url = job.wait_for(r"serving metrics on (http://\S+/metrics)").group(1)
        deadline = time.monotonic() + 20
        while not value(scrape(url), "backup_files_total", operation="backup", outcome="done"):
            assert time.monotonic() < deadline, "the backup never finished a file"
            time.sleep(0.05)
        job.proc.send_signal(signal.SIGINT)
        code, out, err = job.finish()
    assert code == EXIT_INTERRUPTED, err
    assert out == ""
    assert "interrupted: nothing was committed" in err
    [pushed] = gateway.received
    files = value(pushed.samples, "backup_files_total", operation="backup", outcome="done")
    assert files is not None and 0 < files < 300
    assert "backup_last_success_timestamp_seconds" not in pushed.body
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(url)


def test_output_piped_into_a_reader_that_stops_early_ends_cleanly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    backup = cli("backup", small_files(tmp_path / "source", 600), store, "--name", "b")
    assert backup.returncode == EXIT_OK, backup.stderr
    show = [sys.executable, "-m", "asyncbackup", "show", str(store), "b", "--json"]
    # About 100 KiB of JSON into `head`, which takes 100 bytes and goes: a write hits a closed pipe.
    script = f"{shlex.join(show)} | head -c 100 >/dev/null; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
