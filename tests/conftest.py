"""Shared fixtures: sample trees, a strict tree comparison, and a sleep that only records."""

from __future__ import annotations

import itertools
import json
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import EngineConfig, RetryPolicy
from tests.remote import StoreUnderTest
from tests.servers import Server, http, start_fake_gcs, start_moto

SMALL_CHUNK = 64 * 1024  # the smallest chunk size allowed: makes multi-chunk files cheap


def fast_config(*, concurrency: int = 4, pack_threshold: int = 0, **retry: Any) -> EngineConfig:
    """Small chunks and a retry policy whose sleeps tests replace with ``RecordingSleep``.

    One object per chunk (``pack_threshold`` 0) unless asked: these unit tests look at chunk
    objects; packs have tests of their own (``test_packs.py``), and the CLI tests run with the
    default, packs on."""
    return EngineConfig(
        concurrency=concurrency,
        chunk_size=SMALL_CHUNK,
        retry=RetryPolicy(**retry),
        pack_threshold=pack_threshold,
        pack_size=SMALL_CHUNK,
    )


class RecordingSleep:
    """An injected sleep that returns at once and remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def make_tree(root: Path, *, seed: int = 0) -> Path:
    """A tree with what restores get wrong: several chunks, empty files and dirs, links,
    odd modes and mtimes, unicode, spaces, a newline and non-UTF-8 bytes in names."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(rnd.randbytes(3 * SMALL_CHUNK + 123))  # 4 chunks
    (root / "exact.bin").write_bytes(rnd.randbytes(2 * SMALL_CHUNK))  # exactly 2 chunks
    (root / "dup-a.bin").write_bytes(b"same bytes" * 1000)
    (root / "dup-b.bin").write_bytes(b"same bytes" * 1000)  # stored once
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deeper" / "empty-dir").mkdir(parents=True)
    (root / "sub" / "deeper" / "leaf.txt").write_text("leaf\n")
    (root / "sub" / "name with spaces.txt").write_text("spaces\n")
    (root / "sub" / "naïve ünïcødé ☃.txt").write_text("unicode\n")
    (root / "sub" / "line\nbreak").write_text("newline in the name\n")
    os.mkdir(os.fsencode(root / "sub") + b"/bytes-\xff\xfe")
    with open(os.fsencode(root / "sub") + b"/bytes-\xff\xfe/latin-\xe9.txt", "wb") as f:
        f.write(b"not utf-8 name\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o750)
    (root / "private").write_text("secret\n")
    (root / "private").chmod(0o600)
    os.symlink("sub/deeper/leaf.txt", root / "link-to-leaf")
    os.symlink("/nonexistent/target", root / "dangling-link")
    os.symlink("sub", root / "link-to-dir")
    (root / "readonly-dir").mkdir()
    (root / "readonly-dir" / "inside").write_text("x")
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, ns=(1_600_000_000_000_000_000 + i * 1_000_003,) * 2, follow_symlinks=False)
    (root / "readonly-dir").chmod(0o555)
    return root


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything a restore must reproduce, by relative path (as bytes)."""
    seen: dict[bytes, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, base)
            if stat.S_ISLNK(st.st_mode):
                seen[relative] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                seen[relative] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                with open(path, "rb") as f:
                    content = f.read()
                seen[relative] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return seen


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Bytes, modes, mtimes, link targets, empty files and dirs: all equal."""
    want, got = snapshot(expected), snapshot(actual)
    assert sorted(got) == sorted(want)
    for path, value in want.items():
        assert got[path] == value, path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "source")


# Real servers (DESIGN.md section 8): one of each per session, a fresh bucket per test.

_bucket_numbers = itertools.count()


def fresh_bucket_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_bucket_numbers)}"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Credentials and endpoint for moto in the environment, as a user would set them; no
    AWS files are read, so the tests cannot pick up a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_server.url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture
def s3_bucket(s3_env: Server) -> str:
    """A new, empty bucket on moto (path-style: PUT /bucket creates it)."""
    name = fresh_bucket_name("s3")
    http("PUT", f"{s3_env.url}/{name}")
    return name


@dataclass(frozen=True)
class AuthS3:
    """A moto server that checks credentials, a bucket on it, two users' keys and a wrong one."""

    server: Server
    bucket: str
    writer: tuple[str, str]  # may do everything
    reader: tuple[str, str]  # may only list and read
    wrong_secret: tuple[str, str]  # the writer's key id with another secret
    admin: tuple[str, str]  # may manage IAM users and keys (to rotate the writer's keys)


@pytest.fixture(scope="session")
def moto_auth() -> Iterator[AuthS3]:
    """moto with IAM checks on: the first 9 requests (set-up below) go unchecked, then every
    request is checked against the users and policies made here."""
    import boto3  # moto's own dependency; set-up only, the project itself uses aiobotocore

    server = start_moto(free_requests=9)
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        users = {
            "writer": ["s3:*"],
            "reader": ["s3:GetObject", "s3:ListBucket"],
            "admin": ["iam:*"],
        }
        keys: dict[str, tuple[str, str]] = {}
        for user, actions in users.items():
            iam.create_user(UserName=user)
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        bucket = "auth-bucket"
        boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=keys["writer"][0],
            aws_secret_access_key=keys["writer"][1],
        ).create_bucket(Bucket=bucket)
        wrong = (keys["writer"][0], "wrong")
        yield AuthS3(server, bucket, keys["writer"], keys["reader"], wrong, keys["admin"])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Server]:
    server = start_fake_gcs()
    yield server
    server.stop()


@pytest.fixture
def gcs_env(gcs_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """STORAGE_EMULATOR_HOST points gcloud-aio (and the CLI's subprocesses) at fake-gcs-server."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    return gcs_server


@pytest.fixture
def gcs_bucket(gcs_env: Server) -> str:
    """A new, empty bucket on fake-gcs-server."""
    name = fresh_bucket_name("gcs")
    body = json.dumps({"name": name}).encode()
    http("POST", f"{gcs_env.url}/storage/v1/b?project=test", body)
    return name


@pytest.fixture(params=["s3", "gcs"])
def remote(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StoreUnderTest:
    """A fresh bucket on moto, then on fake-gcs-server: tests that take it run on both."""
    bucket: str = request.getfixturevalue(f"{request.param}_bucket")
    server: Server = request.getfixturevalue(f"{request.param}_env")
    return StoreUnderTest(request.param, bucket, monkeypatch, server)


@pytest.fixture(params=["local", "s3", "gcs"])
def any_store(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> StoreUnderTest:
    """A local directory, then a bucket on moto, then one on fake-gcs-server."""
    if request.param == "local":
        return StoreUnderTest("local", str(tmp_path / "store-root"), monkeypatch)
    bucket: str = request.getfixturevalue(f"{request.param}_bucket")
    server: Server = request.getfixturevalue(f"{request.param}_env")
    return StoreUnderTest(request.param, bucket, monkeypatch, server)


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL for command-line tests: a local directory, then a fresh bucket on moto
    (its endpoint and credentials in the environment the CLI's subprocess inherits)."""
    if request.param == "local":
        return str(tmp_path / "store-root")
    bucket: str = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/repo"


# Figures the chaos tests report (faults injected, retries, bytes restored...), printed after
# the run: `make chaos` shows them, and the README's "What we test against" quotes them.
CHAOS_FIGURES: list[tuple[str, str]] = []
Report = Callable[[str], None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    def add(text: str) -> None:
        CHAOS_FIGURES.append((request.node.name, text))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if CHAOS_FIGURES:
        terminalreporter.section("chaos figures")
        for test, text in CHAOS_FIGURES:
            terminalreporter.write_line(f"{test}: {text}")
