"""A live PostgreSQL under a pgbench write load, backed up online between pg_backup_start and
pg_backup_stop with its WAL archive, restored, started, and checked with pg_amcheck and by its
rows (docs/live-data.md describes the procedure this follows).

PostgreSQL refuses to run as root: as root the server and its tools run as the ``postgres``
user (made by Debian's package); the backup and restore run as whoever runs the tests.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Report
from tests.test_cli import EXIT_OK, EXIT_WARNINGS, cli

SCALE = 1  # pgbench_accounts holds 100,000 rows per unit of scale


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


BINDIR = _bindir()
pytestmark = pytest.mark.skipif(
    BINDIR is None, reason="needs PostgreSQL: apt-get install postgresql (Debian package)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """One PostgreSQL server on a unix socket in a temporary directory, owned by ``user``."""

    def __init__(self, data: Path, sockets: Path, user: str | None) -> None:
        self.data = data
        self.sockets = sockets
        self.port = _free_port()
        self.user = user

    def run(self, tool: str, *args: str, timeout: float = 120) -> str:
        """Run ``tool`` (from PostgreSQL's bin directory) as the server's user; its stdout."""
        assert BINDIR is not None
        result = subprocess.run(
            [str(BINDIR / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.user,
            cwd="/",
        )
        assert result.returncode == 0, f"{tool} {args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def connection(self) -> list[str]:
        return ["-h", str(self.sockets), "-p", str(self.port), "-U", "postgres"]

    def sql(self, query: str) -> str:
        return self.run("psql", *self.connection(), "-X", "-A", "-t", "-d", "postgres", "-c", query)

    def configure(self, archive: Path) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.sockets}'",
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"'test ! -f {archive}/%f && cp %p {archive}/%f'",
            "fsync": "off",  # the test never crashes the server; fsync would only slow it
            "shared_buffers": "16MB",
            "max_wal_size": "64MB",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


class Session:
    """One psql session kept open: pg_backup_start ties the backup to its session."""

    def __init__(self, cluster: Cluster) -> None:
        assert BINDIR is not None
        self.process = subprocess.Popen(
            [str(BINDIR / "psql"), *cluster.connection(), "-X", "-A", "-t", "-q", "-d", "postgres"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=cluster.user,
            cwd="/",
        )

    def query(self, sql: str) -> list[str]:
        """Run ``sql`` and return its output lines (up to a marker this adds)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{sql}\nSELECT '--end--';\n")
        self.process.stdin.flush()
        lines = []
        while (line := self.process.stdout.readline()) != "--end--\n":
            assert line, f"psql ended during {sql!r}"
            lines.append(line.rstrip("\n"))
        return lines

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory the ``postgres`` user owns (pytest's temporary directories are root's)."""
    path = Path(tempfile.mkdtemp(prefix="asyncbackup-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def owned_by_server(path: Path, user: str | None) -> None:
    """Hand a restored tree to the server's user (a restore as root leaves it root's)."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for directory, dirs, files in os.walk(path):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(
                os.path.join(directory, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False
            )


def balances(cluster: Cluster) -> list[str]:
    """Row counts and the four sums pgbench keeps equal: each transaction adds one delta to an
    account, its teller, its branch and the history."""
    counts = ", ".join(
        f"(SELECT count(*) FROM pgbench_{table})"
        for table in ("accounts", "branches", "tellers", "history")
    )
    sums = ", ".join(
        f"(SELECT coalesce(sum({column}), 0) FROM pgbench_{table})"
        for table, column in (
            ("accounts", "abalance"),
            ("branches", "bbalance"),
            ("tellers", "tbalance"),
            ("history", "delta"),
        )
    )
    row = cluster.sql(f"SELECT {counts}, {sums}")
    return row.strip().split("|")


def test_postgres_backed_up_online_under_load_restores_and_checks_clean(
    base: Path, tmp_path: Path, report: Report
) -> None:
    user = "postgres" if os.geteuid() == 0 else None
    sockets, archive, extra = base / "sockets", base / "wal-archive", base / "extra"
    for directory in (sockets, archive, extra / "wal"):
        directory.mkdir(parents=True)
    owned_by_server(base, user)
    live = Cluster(base / "data", sockets, user)
    live.run("initdb", "-D", str(live.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    live.configure(archive)
    live.start()
    load: subprocess.Popen[bytes] | None = None
    restored: Cluster | None = None
    try:
        live.run("pgbench", *live.connection(), "-i", "-s", str(SCALE), "-q", "postgres")
        assert BINDIR is not None
        # pgbench writes all through the backup, at a rate 2 shared cores can carry.
        load = writer = subprocess.Popen(
            [str(BINDIR / "pgbench"), *live.connection(), "-c", "2", "-j", "1", "-R", "300",
             "-T", "600", "-n", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=user, cwd="/",
        )  # fmt: skip
        time.sleep(2)
        session = Session(live)
        before = int(live.sql("SELECT count(*) FROM pgbench_history"))
        assert before > 0, "pgbench is not writing"
        session.query("SELECT pg_backup_start('asyncbackup-test', true);")

        store = tmp_path / "store"
        backup = cli("backup", live.data, store, "--name", "pg-data", timeout=300)
        # Exit 3 is what a live data directory is expected to give: files change as they are
        # read, and are stored as read; WAL replay makes them consistent.
        assert backup.returncode in (EXIT_OK, EXIT_WARNINGS), backup.stderr
        torn = backup.stderr.count("stored as last read")
        report(f"live backup exit {backup.returncode}, {torn} files stored as last read")

        [label_hex] = session.query(
            "SELECT encode(convert_to(labelfile, 'UTF8'), 'hex') FROM pg_backup_stop(true);"
        )
        session.close()
        writer.terminate()
        writer.wait(timeout=30)
        (extra / "backup_label").write_bytes(bytes.fromhex(label_hex))
        for segment in archive.iterdir():
            shutil.copy2(segment, extra / "wal" / segment.name)
        after = int(live.sql("SELECT count(*) FROM pgbench_history"))  # no more writes now
        wal = cli("backup", extra, store, "--name", "pg-wal")
        assert wal.returncode == EXIT_OK, wal.stderr
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        live.stop()

    try:
        target, target_extra = base / "restored", base / "restored-extra"
        for name, where in (("pg-data", target), ("pg-wal", target_extra)):
            result = cli("restore", store, name, where, timeout=300)
            assert result.returncode == EXIT_OK, result.stderr
        shutil.copy(target_extra / "backup_label", target / "backup_label")
        (target / "postmaster.pid").unlink(missing_ok=True)
        for segment in (target / "pg_wal").iterdir():
            if segment.is_file():
                segment.unlink()
        with (target / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"restore_command = 'cp {target_extra}/wal/%f %p'\n")
            conf.write("archive_mode = off\n")
        (target / "recovery.signal").touch()
        target.chmod(0o700)
        owned_by_server(base, user)
        restored = Cluster(target, sockets, user)
        with (target / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {restored.port}\n")
        restored.start()
        for _ in range(600):  # recovery replays the archive, then the server opens for writes
            if restored.sql("SELECT pg_is_in_recovery()").strip() == "f":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the restored server never finished recovery")
        checked = restored.run(
            "pg_amcheck", *restored.connection(), "--all", "--install-missing", "--heapallindexed"
        )
        assert checked == "", checked  # pg_amcheck prints only what it finds corrupt
        accounts, branches, tellers, history, *sums = balances(restored)
        assert (int(accounts), int(branches), int(tellers)) == (100_000 * SCALE, SCALE, 10 * SCALE)
        # Everything committed before pg_backup_start is there; nothing after the stop can be.
        assert before <= int(history) <= after
        assert len(set(sums)) == 1, f"balances disagree: {sums}"
        report(f"restored: {history} of {before}..{after} pgbench transactions, amcheck clean")
    finally:
        if restored is not None:
            restored.stop()
