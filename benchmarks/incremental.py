"""Incremental backups beside restic: a first backup, an unchanged one, one with 1% changed.

Both tools back up the same tree (copied from this machine's own directories), run after run
(asyncbackup, then restic, for each kind of run), for several rounds, each round into fresh
repositories. Each run is measured from outside: wall time, CPU (user + system, ``os.wait4``),
bytes read (``rchar`` of ``/proc/PID/io``, which includes the children a process waited for)
and peak RSS. The same three runs then go to S3 (moto on 127.0.0.1) through a counting proxy,
which reports the requests each run sent; asyncbackup's unchanged run is repeated against a
store holding many more chunks, to show whether its requests depend on the size of the store.

Then two measurements of asyncbackup alone: the peak RSS of a backup of many small files with a
parent of as many entries, and how long parsing a large MANIFEST stalls the event loop
(``benchmarks/loop_stall.py``, which also measures whole backups).

restic comes from Debian (``apt-get install restic`` when it is missing; its runs are skipped,
with a message, when it cannot be installed).

    python -m benchmarks.incremental [--quick] [--files 50000] [--gib 1.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.loop_stall import parse_stalls, parse_table
from benchmarks.report import RESULTS, command, machine, median_of, save
from tests.proxy import FaultProxy
from tests.servers import http, start_moto

MiB = 1024 * 1024
SOURCES = ("/usr/lib", "/usr/share", "/usr/include", "/usr/local/lib", "/opt", "/root/.pyenv")
RESTIC_PASSWORD = "bench"


@dataclass
class Run:
    tool: str
    kind: str  # first, unchanged, changed
    where: str  # local, s3, s3 big store
    round: int
    seconds: float
    cpu: float
    read_mib: float
    rss_mib: float
    requests: int = 0


def copy_tree(target: Path, *, files: int, size: int, max_file: int = 8 * MiB) -> tuple[int, int]:
    """Copy regular files from this machine's directories into ``target`` until there are at
    least ``files`` of them and ``size`` bytes; returns (files, bytes) copied."""
    count = total = 0
    for root in SOURCES:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if target in Path(dirpath).parents or Path(dirpath) == target:
                continue
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    length = os.path.getsize(path)
                    if length > max_file or (total >= size and length > 16 * 1024):
                        continue  # once there are bytes enough, only small files for the count
                    dest = target / os.path.relpath(path, "/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
                except OSError:
                    continue
                count += 1
                total += length
                if count >= files and total >= size:
                    return count, total
    if count < files or total < size:  # not enough on this machine: made up with random data
        filler = target / "filler"
        filler.mkdir(exist_ok=True)
        rnd = random.Random(0)
        while count < files or total < size:
            length = max(1, min(max_file, (size - total) // max(1, files - count)))
            (filler / f"f{count}").write_bytes(rnd.randbytes(length))
            count += 1
            total += length
    return count, total


def all_files(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink())


def change_one_percent(tree: Path, round_: int) -> int:
    """Append a line to 1% of the files (chosen with the round as seed); how many."""
    files = all_files(tree)
    chosen = random.Random(round_).sample(files, max(1, len(files) // 100))
    for path in chosen:
        with open(path, "ab") as f:
            f.write(f"changed in round {round_}\n".encode())
    return len(chosen)


def warm(tree: Path) -> None:
    """Read every file once, so that every run finds the page cache warm."""
    for path in all_files(tree):
        with open(path, "rb") as f:
            while f.read(MiB):
                pass


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, float]:
    """Run ``argv``; (wall seconds, CPU seconds, MiB read, peak RSS MiB). The command runs under
    a shell that prints its own ``/proc/PID/io`` after waiting for it: the kernel adds a reaped
    child's I/O counters to its parent's, so ``rchar`` there is the command's."""
    with tempfile.NamedTemporaryFile("r") as io:
        script = 'd="$1"; shift; "$@"; rc=$?; cat /proc/$$/io > "$d"; exit $rc'
        started = time.monotonic()
        process = subprocess.Popen(
            ["sh", "-c", script, "sh", io.name, *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        assert process.stderr is not None
        err = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 3):
            raise SystemExit(f"{argv} exited {code}:\n{err[-3000:]}")
        counters = dict(line.split(": ") for line in io.read().splitlines() if ": " in line)
    rchar = int(counters.get("rchar", "0"))
    return wall, usage.ru_utime + usage.ru_stime, rchar / MiB, usage.ru_maxrss / 1024


def find_restic() -> str | None:
    """restic's path, installed from Debian if missing; None (with a message) if it cannot be."""
    found = shutil.which("restic")
    if found:
        return found
    print("restic is missing: apt-get install restic", flush=True)
    for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "restic"]):
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"skipping restic: {' '.join(step)} failed: {done.stderr[-500:]}", flush=True)
            return None
    return shutil.which("restic")


class Tools:
    """The two tools' commands, for a local or an S3 repository."""

    def __init__(self, restic: str | None, env: dict[str, str], cache: Path) -> None:
        self.restic = restic
        self.cache = cache  # restic's local cache of its index and trees, as a user has it
        self.env = {**env, "RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_CACHE_DIR": str(cache)}

    def asyncbackup(self, tree: Path, store: str, name: str) -> list[str]:
        return [sys.executable, "-m", "asyncbackup", "backup", str(tree), store, "-q",
                "--name", name]  # fmt: skip

    def restic_backup(self, tree: Path, repo: str) -> list[str]:
        assert self.restic is not None
        return [self.restic, "-r", repo, "-q", "backup", str(tree), "--host", "bench"]

    def restic_init(self, repo: str) -> None:
        assert self.restic is not None
        subprocess.run([self.restic, "-r", repo, "-q", "init"], env=self.env, check=True,
                       capture_output=True)  # fmt: skip


def local_rounds(tree: Path, scratch: Path, tools: Tools, rounds: int) -> list[Run]:
    runs: list[Run] = []
    empty = scratch / "empty"
    empty.mkdir()
    for round_ in range(1, rounds + 1):  # what the interpreter and its imports read alone
        argv = tools.asyncbackup(empty, str(scratch / "store-empty"), f"empty-{round_}")
        wall, cpu, read, rss = measure(argv, tools.env)
        runs.append(Run("asyncbackup", "empty directory", "local", round_, wall, cpu, read, rss))
    for round_ in range(1, rounds + 1):
        ours, theirs = str(scratch / f"store-{round_}"), str(scratch / f"restic-{round_}")
        if tools.restic:
            tools.restic_init(theirs)
        for kind in ("first", "unchanged", "changed"):
            if kind == "changed":
                print(f"round {round_}: {change_one_percent(tree, round_)} files changed")
            name = f"r{round_}-{kind}"
            commands = [("asyncbackup", tools.asyncbackup(tree, ours, name))]
            if tools.restic:
                commands.append(("restic", tools.restic_backup(tree, theirs)))
            for tool, argv in commands:
                wall, cpu, read, rss = measure(argv, tools.env)
                runs.append(Run(tool, kind, "local", round_, wall, cpu, read, rss))
                print(f"  {tool:11} {kind:9} {wall:7.1f} s  {cpu:6.1f} s CPU  "
                      f"{read:8.1f} MiB read  {rss:6.1f} MiB RSS", flush=True)  # fmt: skip
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(theirs, ignore_errors=True)
    return runs


class CountingProxy:
    """A proxy in front of moto, in a thread of its own, that counts the requests it forwards."""

    def __init__(self, upstream_port: int) -> None:
        self.counts: Counter[str] = Counter()
        self._port = upstream_port
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def take(self) -> int:
        """The requests counted since the last call."""
        total = sum(self.counts.values())
        self.counts.clear()
        return total

    async def _serve(self) -> None:
        def rule(n: int, method: str, path: str) -> None:
            self.counts[method] += 1

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FaultProxy(self._port, rule) as proxy:
            self.url = proxy.url
            self._ready.set()
            await self._stop.wait()


def fill_store(url: str, bucket: str, prefix: str, count: int) -> None:
    """Put ``count`` one-byte chunks under ``prefix``chunks/: a store that holds far more."""
    import boto3  # moto's own dependency, as in the tests' set-up

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    rnd = random.Random(1)

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}chunks/{rnd.randbytes(32).hex()}", Body=b"x")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))


def s3_runs(tree: Path, tools: Tools, extra_chunks: int, other_backups: int) -> list[Run]:
    moto = start_moto()
    env = dict(tools.env)
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull)  # fmt: skip
    runs: list[Run] = []
    try:
        port = int(moto.url.rsplit(":", 1)[1])
        with CountingProxy(port) as proxy:
            env["AWS_ENDPOINT_URL"] = proxy.url
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            http("PUT", f"{moto.url}/bench")
            ours = "s3://bench/ours"
            theirs = f"s3:{proxy.url}/bench/restic"
            tools = Tools(tools.restic, env, tools.cache)
            if tools.restic:
                tools.restic_init(theirs)
            for kind in ("first", "unchanged", "changed"):
                if kind == "changed":
                    change_one_percent(tree, 100)
                commands = [("asyncbackup", tools.asyncbackup(tree, ours, f"s3-{kind}"))]
                if tools.restic:
                    commands.append(("restic", tools.restic_backup(tree, theirs)))
                for tool, argv in commands:
                    proxy.take()
                    wall, cpu, read, rss = measure(argv, tools.env)
                    runs.append(Run(tool, kind, "s3", 1, wall, cpu, read, rss, proxy.take()))
                    print(f"  S3 {tool:11} {kind:9} {wall:7.1f} s  {runs[-1].requests} requests",
                          flush=True)  # fmt: skip
            # The same unchanged backup (same parent, named, so the number of backups does not
            # change what it reads) before and after the store grows by ``extra_chunks``.
            for where, name in (("s3 same store", "s3-again"), ("s3 big store", "s3-big")):
                if where == "s3 big store":
                    print(f"adding {extra_chunks} chunks to the store", flush=True)
                    fill_store(moto.url, "bench", "ours/", extra_chunks)
                argv = [*tools.asyncbackup(tree, ours, name), "--parent", "s3-changed"]
                proxy.take()
                wall, cpu, read, rss = measure(argv, tools.env)
                runs.append(Run("asyncbackup", "unchanged", where, 1, wall, cpu, read, rss,
                                proxy.take()))  # fmt: skip
                print(f"  {where}: unchanged {wall:.1f} s, {runs[-1].requests} requests")
            # Finding the parent (no --parent): before and after ``other_backups`` backups of
            # another source are added, to show what the search costs per backup in the store.
            other = tree.parent / "other-source"
            other.mkdir(exist_ok=True)
            (other / "f").write_text("another source\n")
            for where, name in (("s3 parent found", "s3-found"),
                                ("s3 parent found, more backups", "s3-found-more")):  # fmt: skip
                if name == "s3-found-more":
                    print(f"adding {other_backups} backups of another source", flush=True)
                    for i in range(other_backups):
                        measure(tools.asyncbackup(other, ours, f"other-{i}"), tools.env)
                proxy.take()
                wall, cpu, read, rss = measure(tools.asyncbackup(tree, ours, name), tools.env)
                runs.append(Run("asyncbackup", "unchanged", where, 1, wall, cpu, read, rss,
                                proxy.take()))  # fmt: skip
                print(f"  {where}: unchanged {wall:.1f} s, {runs[-1].requests} requests")
    finally:
        moto.stop()
    return runs


def memory_with_parent(scratch: Path, files: int) -> list[dict[str, Any]]:
    """Peak RSS of a first backup of ``files`` small files, then of one with that parent."""
    tree = scratch / "many"
    rnd = random.Random(2)
    for i in range(files):
        folder = tree / f"d{i // 1000}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_bytes(rnd.randbytes(512))
    store = str(scratch / "store-many")
    rows = []
    for name in ("first", "with-parent"):
        argv = [sys.executable, "-m", "asyncbackup", "backup", str(tree), store, "-q",
                "--name", name]  # fmt: skip
        wall, _, _, rss = measure(argv, dict(os.environ))
        rows.append({"run": name, "files": files, "seconds": round(wall, 1),
                     "peak_rss_mib": round(rss, 1)})  # fmt: skip
        print(f"  {files} files, {name}: {wall:.1f} s, peak RSS {rss:.1f} MiB", flush=True)
    shutil.rmtree(tree)
    shutil.rmtree(store)
    return rows


def tables(runs: list[Run], memory: list[dict[str, Any]], stall: dict[str, Any]) -> str:
    local = [asdict(r) for r in runs if r.where == "local"]
    out = ["Local store, medians of the rounds (asyncbackup / restic: ratio > 1 means "
           "asyncbackup is faster or lighter)", "",
           "| run | asyncbackup wall | restic wall | speed ratio | asyncbackup CPU | restic CPU "
           "| asyncbackup read | restic read | asyncbackup RSS | restic RSS |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for kind in ("first", "unchanged", "changed", "empty directory"):

        def m(tool: str, field: str, kind: str = kind) -> float | None:
            try:
                return median_of(local, field, tool=tool, kind=kind)
            except ValueError:
                return None

        def f(value: float | None, unit: str) -> str:
            return "-" if value is None else f"{value:.1f} {unit}"

        ours, theirs = m("asyncbackup", "seconds"), m("restic", "seconds")
        ratio = f"{theirs / ours:.2f}" if ours and theirs else "-"
        out.append(
            f"| {kind} | {f(ours, 's')} | {f(theirs, 's')} | {ratio} | "
            f"{f(m('asyncbackup', 'cpu'), 's')} | {f(m('restic', 'cpu'), 's')} | "
            f"{f(m('asyncbackup', 'read_mib'), 'MiB')} | {f(m('restic', 'read_mib'), 'MiB')} | "
            f"{f(m('asyncbackup', 'rss_mib'), 'MiB')} | {f(m('restic', 'rss_mib'), 'MiB')} |"
        )
    s3 = [r for r in runs if r.where != "local"]
    if s3:
        out += ["", "S3 (moto through a counting proxy), one round", "",
                "| run | tool | wall | CPU | requests |", "|---|---|---:|---:|---:|"]  # fmt: skip
        out += [f"| {r.kind} ({r.where}) | {r.tool} | {r.seconds:.1f} s | {r.cpu:.1f} s | "
                f"{r.requests} |" for r in s3]  # fmt: skip
    if memory:
        out += [
            "",
            "| asyncbackup, small files | files | wall | peak RSS |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| {r['run']} | {r['files']} | {r['seconds']} s | {r['peak_rss_mib']} MiB |"
                for r in memory]  # fmt: skip
    if stall:
        out += ["", *parse_table(stall)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 files, 100 MiB, one round")
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3-files", type=int, default=5_000, help="the tree backed up to S3")
    parser.add_argument("--extra-chunks", type=int, default=20_000, help="S3's bigger store")
    parser.add_argument("--other-backups", type=int, default=50, help="S3: more backups")
    parser.add_argument("--memory-files", type=int, default=100_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["local", "s3", "memory"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.files, args.gib, args.rounds = 5_000, 0.1, 1
        args.s3_files, args.extra_chunks, args.memory_files = 1_000, 5_000, 10_000
        args.other_backups = 10
        args.out = args.out / "quick"

    # As pip does when it installs a package: every run then starts from compiled bytecode, not
    # (with PYTHONDONTWRITEBYTECODE set, as on CI machines) from source each time.
    import compileall

    import asyncbackup

    compileall.compile_dir(Path(asyncbackup.__file__).parent, quiet=1)
    restic = find_restic()
    runs: list[Run] = []
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as scratch_name:
        scratch = Path(scratch_name)
        tools = Tools(restic, dict(os.environ), scratch / "restic-cache")
        if "local" not in args.skip:
            tree = scratch / "tree"
            count, size = copy_tree(tree, files=args.files, size=int(args.gib * 1024 * MiB))
            print(f"tree: {count} files, {size / MiB:.0f} MiB", flush=True)
            warm(tree)
            runs += local_rounds(tree, scratch, tools, args.rounds)
            shutil.rmtree(tree)
        if "s3" not in args.skip:
            tree = scratch / "s3-tree"
            count, size = copy_tree(tree, files=args.s3_files, size=0)
            print(f"S3 tree: {count} files, {size / MiB:.0f} MiB", flush=True)
            runs += s3_runs(tree, tools, args.extra_chunks, args.other_backups)
            shutil.rmtree(tree)
        if "memory" not in args.skip:
            memory = memory_with_parent(scratch, args.memory_files)
    stall = parse_stalls(args.memory_files, args.rounds)
    markdown = tables(runs, memory, stall)
    print(markdown)
    result = {
        "command": command("benchmarks.incremental", sys.argv[1:]),
        "machine": machine(),
        "restic": restic_version(restic),
        "runs": [asdict(r) for r in runs],
        "memory": memory,
        "loop_stall": stall,
    }
    save(args.out, "incremental", result, markdown)


def restic_version(restic: str | None) -> str:
    if restic is None:
        return "not installed"
    done = subprocess.run([restic, "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
