"""The S3 store against a real S3 server (moto, started by the fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import tracemalloc
import urllib.error
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from asyncbackup import (
    BackupEngine,
    ConfigError,
    FaultyStorage,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    StoreOptions,
    TransientStorageError,
    open_storage,
)
from asyncbackup.storage.s3 import S3Storage, _from_client_error
from tests.conftest import SMALL_CHUNK, AuthS3, assert_same_tree, fast_config
from tests.proxy import FaultProxy
from tests.servers import Server, free_port, http
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, cli, retries_in, small_files


def s3_store(bucket: str, prefix: str = "p/", **options: Any) -> S3Storage:
    return S3Storage(bucket, prefix, StoreOptions(**options))


def bucket_keys(server: Server, bucket: str) -> list[str]:
    """Every key in the bucket, read past our code with a plain HTTP request."""
    return re.findall(r"<Key>([^<]*)</Key>", http("GET", f"{server.url}/{bucket}").decode())


# The store itself


async def test_put_get_list_delete_round_trip(s3_bucket: str) -> None:
    async with s3_store(s3_bucket) as store:
        payload = bytes(range(256)) * 1000
        await store.put("chunks/aa", payload)
        await store.put("chunks/empty", b"")
        await store.put("chunks/aa", payload)  # overwriting with the same bytes is fine
        assert await store.get("chunks/aa") == payload
        assert await store.get("chunks/empty") == b""
        assert await store.list_page("chunks/") == (["chunks/aa", "chunks/empty"], None)
        assert await store.list_page("backups/") == ([], None)
        await store.delete("chunks/aa")
        await store.delete("chunks/aa")  # deleting what is gone is not an error
        with pytest.raises(ObjectNotFoundError, match="chunks/aa"):
            await store.get("chunks/aa")


async def test_create_only_put_keeps_the_first(s3_bucket: str) -> None:
    async with s3_store(s3_bucket) as store:
        await store.put("backups/x/MANIFEST", b"first", overwrite=False)
        with pytest.raises(ObjectExistsError, match="exists already"):
            await store.put("backups/x/MANIFEST", b"second", overwrite=False)
        assert await store.get("backups/x/MANIFEST") == b"first"


async def test_create_only_holds_on_servers_that_ignore_if_none_match(s3_bucket: str) -> None:
    def drop_the_condition(request: Any, **_: Any) -> None:
        request.headers.pop("If-None-Match", None)  # as rclone serve s3 does with it

    async with s3_store(s3_bucket) as store:
        client: Any = await store._s3()
        client.meta.events.register("before-send.s3.PutObject", drop_the_condition)
        await store.put("backups/x/MANIFEST", b"first", overwrite=False)
        with pytest.raises(ObjectExistsError, match="exists already"):
            await store.put("backups/x/MANIFEST", b"second", overwrite=False)
        assert await store.get("backups/x/MANIFEST") == b"first"


async def test_listing_walks_every_page_and_stays_inside_the_prefix(s3_bucket: str) -> None:
    async with s3_store(s3_bucket, "other/") as other:
        await other.put("chunks/zz", b"not ours")
    store = S3Storage(s3_bucket, "mine/", page_size=7)
    async with store:
        keys = [f"chunks/{i:03d}" for i in range(30)]
        await asyncio.gather(*(store.put(k, k.encode()) for k in keys))
        seen: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            page, token = await store.list_page("chunks/", token)
            seen += page
            pages += 1
            if token is None:
                break
    assert seen == keys
    assert pages == 5  # 7 + 7 + 7 + 7 + 2


async def test_each_put_sends_the_sha256_and_the_server_keeps_it(s3_bucket: str) -> None:
    data = b"checked by the server"
    sha256 = hashlib.sha256(data)
    async with s3_store(s3_bucket) as store:
        await store.put("chunks/given", data, digest=sha256.hexdigest())
        await store.put("backups/b/MANIFEST", data)  # no digest given: the store computes it
        client: Any = await store._s3()
        for key in ("p/chunks/given", "p/backups/b/MANIFEST"):
            head = await client.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
            assert head["ChecksumSHA256"] == base64.b64encode(sha256.digest()).decode()


async def test_a_put_never_copies_its_chunk(s3_bucket: str) -> None:
    """botocore and aiohttp would copy a chunk's bytes once per upload (see ``_UncopiedBody``):
    tracemalloc sees every Python allocation, so a copy of 8 MiB cannot hide."""
    data = os.urandom(8 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    async with s3_store(s3_bucket) as store:
        await store.put("chunks/warm-up", b"x")  # the client and its connection exist
        tracemalloc.start()
        try:
            await store.put("chunks/big", data, digest=digest)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert await store.get("chunks/big") == data
    assert peak < 2 * 1024 * 1024, f"{peak / 2**20:.1f} MiB allocated to send 8 MiB"


async def test_puts_are_not_hashed_on_the_event_loop_to_sign_them(
    s3_bucket: str, s3_env: Server
) -> None:
    """Over plain http, botocore would hash each body on the event loop to sign it; both paths
    sign UNSIGNED-PAYLOAD and sign the SHA-256 checksum header instead, which the server checks."""
    data = os.urandom(SMALL_CHUNK)
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode().lower().encode()
    async with (
        FaultProxy(s3_env.port, lambda n, m, p: None) as proxy,
        s3_store(s3_bucket, endpoint_url=proxy.url) as store,  # plain http
    ):
        await store.put("chunks/a", data, digest=hashlib.sha256(data).hexdigest())
        await store.put("backups/b/MANIFEST", data, overwrite=False)
    puts = [head.lower() for head in proxy.heads if head.startswith(b"PUT ")]
    assert len(puts) == 2  # the chunk on the lean path, the MANIFEST through botocore
    for head in puts:
        assert b"\r\nx-amz-content-sha256: unsigned-payload" in head
        assert b"\r\nx-amz-checksum-sha256: " + checksum in head
        signed = re.search(rb"signedheaders=([^,]*)", head)
        assert signed is not None and b"x-amz-checksum-sha256" in signed.group(1).split(b";")


async def test_a_missing_bucket_is_a_permanent_error_that_says_so(s3_env: Server) -> None:
    async with s3_store("no-such-bucket") as store:
        with pytest.raises(PermanentStorageError, match="bucket does not exist"):
            await store.list_page("chunks/")
        with pytest.raises(PermanentStorageError, match="bucket does not exist"):
            await store.put("chunks/a", b"x")


async def test_no_credentials_at_all_is_a_permanent_error_that_says_so(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for here
    async with s3_store(s3_bucket) as store:
        with pytest.raises(PermanentStorageError, match="no AWS credentials found"):
            await store.list_page("chunks/")


async def test_a_server_that_is_not_there_is_transient(s3_env: Server) -> None:
    port = free_port()  # nothing listens here
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1"}
    async with s3_store("bucket", connect_timeout=2, **options) as store:
        with pytest.raises(TransientStorageError, match=r"127\.0\.0\.1"):
            await store.get("chunks/a")


@pytest.mark.parametrize(
    ("code", "status", "transient", "says"),
    [
        ("SlowDown", 503, True, "SlowDown"),
        ("InternalError", 500, True, "InternalError"),
        ("RequestTimeout", 400, True, "RequestTimeout"),
        ("Throttling", 400, True, "Throttling"),
        ("ThrottlingException", 400, True, "ThrottlingException"),
        ("", 429, True, "429"),
        ("", 408, True, "408"),
        ("", 502, True, "502"),
        ("AccessDenied", 403, False, "s3:PutObject"),
        ("InvalidAccessKeyId", 403, False, "AWS_ACCESS_KEY_ID"),
        ("SignatureDoesNotMatch", 403, False, "AWS_SECRET_ACCESS_KEY"),
        ("NoSuchBucket", 404, False, "create it"),
        ("InvalidArgument", 400, False, "InvalidArgument"),
    ],
)
def test_error_mapping(code: str, status: int, transient: bool, says: str) -> None:
    response: Any = {
        "Error": {"Code": code, "Message": "server words"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error = _from_client_error(botocore.exceptions.ClientError(response, "PutObject"), "s3://b/k")
    assert isinstance(error, TransientStorageError if transient else PermanentStorageError)
    assert says in str(error) and "s3://b/k" in str(error)


async def test_the_engine_refuses_more_transfers_than_connections(s3_bucket: str) -> None:
    async with s3_store(s3_bucket, max_connections=4) as store:
        with pytest.raises(ConfigError, match="fewer than concurrency 8"):
            BackupEngine(store, fast_config(concurrency=8))


def test_open_storage_reads_bucket_prefix_and_options() -> None:
    options = StoreOptions(endpoint_url="http://127.0.0.1:1", addressing_style="path")
    store = open_storage("s3://bucket/a/b", options)
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.url) == ("bucket", "a/b/", "s3://bucket/a/b/")
    assert store.options is options
    root = open_storage("s3://bucket")
    assert isinstance(root, S3Storage) and root.prefix == ""


# Connections go back to the pool, whatever happens to a transfer


def connections_in_use(store: S3Storage) -> int:
    """Connections taken from aiobotocore's pool or the lean path's and not given back."""
    return store.connections_in_use()


CANCEL_AFTER = (0.0, 0.005, 0.01, 0.02, 0.05)  # seconds: before, during and after requests


async def cancelled_after(delay: float, calls: list[Coroutine[Any, Any, object]]) -> None:
    """Start ``calls`` at once, and cancel whichever are still running ``delay`` later."""
    tasks = [asyncio.create_task(call) for call in calls]
    await asyncio.sleep(delay)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_no_connection_leaks_under_faults_and_cancellation(
    s3_bucket: str, tmp_path: Path, sleep: Any
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for i in range(60):  # 240 chunks, 60 times the pool's 4 connections
        (source / f"f{i}").write_bytes(os.urandom(4 * SMALL_CHUNK - i))
    config = fast_config(concurrency=4, attempt_timeout=5.0, budget=1000)
    store = s3_store(s3_bucket, max_connections=4)
    async with store:
        await BackupEngine(store, config, sleep=sleep).backup(source, name="b")
        # Downloads fail before and after the body was read, and some hang until the
        # attempt timeout cancels them mid-request: each must hand its connection back.
        faulty = FaultyStorage(store, rate=0.3, hang_rate=0.05, seed=3)
        # 20 attempts: what is tested is the connections, not giving up. With 10, a chunk
        # faulted on every attempt (35% each), or slow past 0.5 s on a loaded machine as
        # often, failed the restore about once in six CI runs.
        hung = fast_config(concurrency=4, attempt_timeout=0.5, budget=1000, max_attempts=20)
        await BackupEngine(faulty, hung, sleep=sleep).restore("b", tmp_path / "restored")
        assert sum(faulty.injected.values()) > 50
        assert connections_in_use(store) == 0

        # Cancel downloads of a 4 MiB object at random points, some in the middle of the body.
        await store.put("chunks/big", os.urandom(4 * 1024 * 1024))
        for delay in CANCEL_AFTER:
            await cancelled_after(delay, [store.get("chunks/big") for _ in range(4)])
        assert connections_in_use(store) == 0
        # And uploads cancelled in flight.
        body = os.urandom(4 * 1024 * 1024)
        for delay in CANCEL_AFTER:
            await cancelled_after(delay, [store.put(f"chunks/up{i}", body) for i in range(4)])
        assert connections_in_use(store) == 0
        # The pool still has its 4 connections: 8 concurrent downloads complete.
        sizes = await asyncio.gather(*(store.get("chunks/big") for _ in range(8)))
        assert {len(s) for s in sizes} == {4 * 1024 * 1024}
        assert connections_in_use(store) == 0
    assert_same_tree(source, tmp_path / "restored")


# The command line, as a user runs it


def test_backup_restore_list_verify_delete_through_the_cli(
    s3_bucket: str, s3_env: Server, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the flag, not the environment, says where
    url = f"s3://{s3_bucket}/team/db"
    where = ("--endpoint-url", s3_env.url, "--region", "us-east-1", "--addressing-style", "path")

    backup = cli("backup", tree, url, *where, "--name", "b1", "--chunk-size", "64KiB")
    assert backup.returncode == EXIT_OK, backup.stderr
    assert backup.stdout.strip() == "b1"
    keys = bucket_keys(s3_env, s3_bucket)
    assert "team/db/backups/b1/MANIFEST" in keys
    assert all(k.startswith("team/db/") for k in keys)
    assert "team/db/backups/b1/INDEX" in keys  # its small chunks are packed
    assert sum(k.startswith("team/db/packs/") for k in keys) >= 1

    listing = cli("list", url, *where, "--json")
    assert listing.returncode == EXIT_OK, listing.stderr
    assert '"name": "b1"' in listing.stdout

    verify = cli("verify", url, "b1", "--deep", *where)
    assert verify.returncode == EXIT_OK, verify.stderr

    restore = cli("restore", url, "b1", tmp_path / "restored", *where)
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, tmp_path / "restored")

    again = cli("backup", tree, url, *where, "--name", "b1")
    assert again.returncode == EXIT_USAGE
    assert "exists already" in again.stderr

    delete = cli("delete", url, "b1", *where)
    assert delete.returncode == EXIT_OK, delete.stderr
    assert "team/db/backups/b1/MANIFEST" not in bucket_keys(s3_env, s3_bucket)
    assert cli("list", url, *where, "--json").stdout.strip() == "[]"


def test_a_zstd_backup_through_the_cli_is_smaller_and_restores_identically(
    s3_bucket: str, s3_env: Server, tree: Path, tmp_path: Path
) -> None:
    log = b"".join(b"line %06d of a log, which repeats itself\n" % i for i in range(16_000))
    (tree / "log.txt").write_bytes(log)  # 672 KB: eleven distinct chunks
    url = f"s3://{s3_bucket}/z"
    backup = cli(  # one object per chunk (packs off): each chunk's key and checksum are checked
        "backup", tree, url, "--name", "z", "--chunk-size", "64K", "--compression", "zstd",
        "--pack-threshold", "0",
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr

    async def stored() -> tuple[dict[str, int], list[str]]:
        async with s3_store(s3_bucket, "z/") as store:
            client: Any = await store._s3()
            keys, _ = await store.list_page("chunks/")
            sizes = {}
            for key in keys:  # S3 kept the checksum of the bytes stored, and checked it
                head = await client.head_object(
                    Bucket=s3_bucket, Key="z/" + key, ChecksumMode="ENABLED"
                )
                data = await store.get(key)
                assert (
                    head["ChecksumSHA256"]
                    == base64.b64encode(hashlib.sha256(data).digest()).decode()
                )
                sizes[key] = len(data)
            return sizes, keys

    sizes, keys = asyncio.run(stored())
    assert sum(k.endswith(".zst") for k in keys) >= 10  # the log's ten chunks, compressed
    assert (
        sum(sizes.values())
        < sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
        - 500_000
    )

    verify = cli("verify", url, "z", "--deep")
    assert verify.returncode == EXIT_OK, verify.stderr
    restore = cli("restore", url, "z", tmp_path / "restored")
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, tmp_path / "restored")


def test_storage_class_and_encryption_as_asked(s3_bucket: str, tree: Path, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/cold"
    backup = cli("backup", tree, url, "--name", "b", "--storage-class", "STANDARD_IA",
                 "--sse", "aws:kms", "--sse-kms-key-id", "alias/backups")  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr

    async def heads() -> dict[str, dict[str, Any]]:
        async with s3_store(s3_bucket, "cold/") as store:
            client: Any = await store._s3()
            keys, _ = await store.list_page("")
            return {k: await client.head_object(Bucket=s3_bucket, Key="cold/" + k) for k in keys}

    found = asyncio.run(heads())
    chunks = {k: h for k, h in found.items() if k.startswith(("chunks/", "packs/"))}
    assert chunks and "backups/b/MANIFEST" in found
    for head in found.values():
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith("alias/backups")
    assert {h.get("StorageClass") for h in chunks.values()} == {"STANDARD_IA"}
    assert found["backups/b/MANIFEST"].get("StorageClass", "STANDARD") == "STANDARD"

    restore = cli("restore", url, "b", tmp_path / "restored")  # no flag needed to read them
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, tmp_path / "restored")


def test_more_than_1000_chunks_are_all_found_again(
    s3_bucket: str, tmp_path: Path, s3_env: Server
) -> None:
    source = small_files(tmp_path / "source", 1100)
    url = f"s3://{s3_bucket}/many"
    metrics = tmp_path / "second.prom"
    # One object per file (packs off): over 1,000 chunk objects, a listing of several pages.
    first = cli(
        "backup", source, url, "--name", "one", "--concurrency", "32", "--pack-threshold", "0"
    )
    assert first.returncode == EXIT_OK, first.stderr
    stored = sum(k.startswith("many/chunks/") for k in bucket_keys_all(s3_env, s3_bucket))
    assert stored > 1000

    # A second backup that trusts no parent (--force) learns from the listing, past its first
    # page, that every chunk is there.
    second = cli(
        "backup", source, url, "--name", "two", "--force", "--metrics-file", metrics,
        "--pack-threshold", "0",
    )  # fmt: skip
    assert second.returncode == EXIT_OK, second.stderr
    text = metrics.read_text()
    assert f'backup_chunks_total{{operation="backup",outcome="skipped"}} {stored}.0' in text
    assert 'backup_chunks_total{operation="backup",outcome="transferred"} 0.0' in text

    assert cli("verify", url, "two").returncode == EXIT_OK
    restore = cli("restore", url, "two", tmp_path / "restored")
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(source, tmp_path / "restored")


def bucket_keys_all(server: Server, bucket: str) -> list[str]:
    """Every key, page by page (a plain listing stops at 1,000)."""
    keys: list[str] = []
    after = ""
    while True:
        page = http("GET", f"{server.url}/{bucket}?list-type=2&start-after={after}").decode()
        found = re.findall(r"<Key>([^<]*)</Key>", page)
        keys += found
        if "<IsTruncated>true</IsTruncated>" not in page:
            return keys
        after = found[-1]


def test_injected_faults_still_give_an_identical_restore(s3_bucket: str, tmp_path: Path) -> None:
    source = small_files(tmp_path / "source", 300)
    url = f"s3://{s3_bucket}/faulty"
    faults = ("--inject-faults", "0.2", "--retry-delay", "0.01", "--fault-seed", "7")
    metrics = tmp_path / "m.prom"
    backup = cli(  # one object per file: 300 requests each way, so faults are sure to be met
        "backup", source, url, "--name", "b", *faults, "--metrics-file", metrics,
        "--pack-threshold", "0",
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr[-3000:]
    assert retries_in(metrics, "backup") > 0
    restore = cli("restore", url, "b", tmp_path / "restored", *faults, "--metrics-file", metrics)
    assert restore.returncode == EXIT_OK, restore.stderr[-3000:]
    assert retries_in(metrics, "restore") > 0
    assert_same_tree(source, tmp_path / "restored")


def test_a_missing_bucket_fails_clearly_and_creates_nothing(
    tree: Path, tmp_path: Path, s3_env: Server
) -> None:
    url = "s3://no-such-bucket/x"
    for args in (
        ("backup", tree, url),
        ("list", url),
        ("restore", url, "b", tmp_path / "restored"),
        ("verify", url, "b"),
    ):
        result = cli(*args)
        assert result.returncode == EXIT_FAILED, (args, result.stderr)
        assert "NoSuchBucket: the bucket does not exist" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    with pytest.raises(urllib.error.HTTPError, match="404"):
        http("GET", f"{s3_env.url}/no-such-bucket")
    assert not (tmp_path / "restored").exists()


# Credentials, on a moto server that checks them


def as_user(keys: tuple[str, str], server: Server) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_ENDPOINT_URL": server.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@pytest.mark.parametrize(
    ("who", "says"),
    [
        ("wrong_secret", "SignatureDoesNotMatch: the request signature does not match: check "
         "AWS_SECRET_ACCESS_KEY"),
        ("unknown_key", "InvalidAccessKeyId: the server does not know this access key"),
        ("reader", "AccessDenied: access denied: the credentials need s3:PutObject"),
    ],
)  # fmt: skip
def test_refused_credentials_fail_clearly_and_write_nothing(
    moto_auth: AuthS3, tree: Path, who: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {
        "wrong_secret": moto_auth.wrong_secret,
        "unknown_key": ("AKIAUNKNOWNKEY000000", "secret"),
        "reader": moto_auth.reader,
    }[who]
    for name, value in as_user(keys, moto_auth.server).items():
        monkeypatch.setenv(name, value)
    url = f"s3://{moto_auth.bucket}/{who}"
    before = keys_as_writer(moto_auth)
    result = cli("backup", tree, url, "--name", "b", "--max-retries", "2")
    assert result.returncode == EXIT_FAILED, result.stderr
    assert says in result.stderr
    assert "retry:" not in result.stderr  # refused credentials are never retried
    assert "Run the same command again" not in result.stderr  # it would fail the same way
    assert keys_as_writer(moto_auth) == before


def test_read_only_credentials_can_restore(
    moto_auth: AuthS3, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{moto_auth.bucket}/shared"
    for name, value in as_user(moto_auth.writer, moto_auth.server).items():
        monkeypatch.setenv(name, value)
    assert cli("backup", tree, url, "--name", "b").returncode == EXIT_OK
    for name, value in as_user(moto_auth.reader, moto_auth.server).items():
        monkeypatch.setenv(name, value)
    restore = cli("restore", url, "b", tmp_path / "restored")
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, tmp_path / "restored")
    delete = cli("delete", url, "b")
    assert delete.returncode == EXIT_FAILED
    assert "AccessDenied" in delete.stderr


def keys_as_writer(auth: AuthS3) -> list[str]:
    """What the bucket holds, listed with the writer's keys (boto3: the checker, not the code)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=auth.server.url,
        region_name="us-east-1",
        aws_access_key_id=auth.writer[0],
        aws_secret_access_key=auth.writer[1],
    )
    return [item["Key"] for item in s3.list_objects_v2(Bucket=auth.bucket).get("Contents", [])]
