"""GCSStorage against a real fake-gcs-server, and through the CLI end to end.

The failures fake-gcs-server never produces (5xx, 429, 401/403, hung, reset or cut connections,
a token server that refuses the key) come from the fault-injecting proxy of ``tests/proxy.py``
in front of it, on 127.0.0.1. Nothing is mocked inside the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tracemalloc
import urllib.error
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from asyncbackup import BackupEngine, ConfigError
from asyncbackup.errors import (
    NameTakenError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from asyncbackup.storage import FaultyStorage, StoreOptions, open_storage
from asyncbackup.storage.gcs import GCSStorage
from tests.conftest import (
    SMALL_CHUNK,
    RecordingSleep,
    assert_same_tree,
    fast_config,
    fresh_bucket_name,
)
from tests.proxy import Fault, FaultProxy, gcs_error
from tests.servers import Server, free_port, http
from tests.test_cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, cli, retries_in

MiB = 1024 * 1024


@pytest.fixture
async def store(gcs_bucket: str) -> AsyncIterator[GCSStorage]:
    async with GCSStorage(gcs_bucket, "x/") as opened:
        yield opened


async def all_keys(store: GCSStorage, prefix: str = "") -> tuple[list[str], int]:
    """Every key under ``prefix``, walking the pages; and how many pages it took."""
    keys: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = await store.list_page(prefix, token)
        keys.extend(page)
        pages += 1
        if token is None:
            return keys, pages


def bucket_exists(server: Server, bucket: str) -> bool:
    try:
        http("GET", f"{server.url}/storage/v1/b/{bucket}")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return False
    return True


# The store on fake-gcs-server.


async def test_put_get_list_delete_round_trip(store: GCSStorage) -> None:
    binary = bytes(range(256)) * 3 + random.Random(1).randbytes(100_000)
    await store.put("chunks/bin", binary)
    await store.put("chunks/empty", b"")
    await store.put("backups/one/MANIFEST", b'{"x": 1}', overwrite=False)

    assert await store.get("chunks/bin") == binary
    assert await store.get("chunks/empty") == b""
    assert (await store.list_page("chunks/")) == (["chunks/bin", "chunks/empty"], None)
    assert sorted((await all_keys(store))[0]) == [
        "backups/one/MANIFEST",
        "chunks/bin",
        "chunks/empty",
    ]
    assert (await store.list_page("nothing/")) == ([], None)

    await store.put("chunks/bin", b"replaced")  # overwrite=True replaces
    assert await store.get("chunks/bin") == b"replaced"

    await store.delete("chunks/bin")
    await store.delete("chunks/bin")  # deleting a missing key is not an error
    with pytest.raises(ObjectNotFoundError, match="no object chunks/bin"):
        await store.get("chunks/bin")
    assert (await store.list_page("chunks/")) == (["chunks/empty"], None)


async def test_prefixes_keep_stores_apart(gcs_bucket: str) -> None:
    async with GCSStorage(gcs_bucket, "a/") as a, GCSStorage(gcs_bucket, "") as root:
        await a.put("chunks/k", b"in a")
        await root.put("chunks/k", b"at the root")
        assert await a.get("chunks/k") == b"in a"
        assert (await a.list_page(""))[0] == ["chunks/k"]
        assert sorted((await root.list_page(""))[0]) == ["a/chunks/k", "chunks/k"]
        assert a.url == f"gs://{gcs_bucket}/a/" and root.url == f"gs://{gcs_bucket}/"


async def test_listing_walks_page_by_page(gcs_bucket: str) -> None:
    async with GCSStorage(gcs_bucket, "p/", page_size=7) as store:
        names = [f"chunks/{i:04d}" for i in range(250)]
        limit = asyncio.Semaphore(16)

        async def put(name: str) -> None:
            async with limit:
                await store.put(name, name.encode())

        await asyncio.gather(*(put(n) for n in names))
        await store.put("other/not-listed", b"")
        first, token = await store.list_page("chunks/")
        assert len(first) == 7 and token is not None
        keys, pages = await all_keys(store, "chunks/")
        assert keys == names  # in order, each once
        assert pages == 36  # ceil(250 / 7): one request per page


async def test_create_only_put_refuses_an_existing_key(store: GCSStorage) -> None:
    await store.put("backups/b/MANIFEST", b"first", overwrite=False)
    with pytest.raises(ObjectExistsError, match="backups/b/MANIFEST exists already"):
        await store.put("backups/b/MANIFEST", b"second", overwrite=False)
    assert await store.get("backups/b/MANIFEST") == b"first"


async def test_missing_object_is_object_not_found(store: GCSStorage) -> None:
    with pytest.raises(ObjectNotFoundError, match="no object chunks/nope"):
        await store.get("chunks/nope")


async def test_missing_bucket_is_a_clear_permanent_error(gcs_env: Server) -> None:
    bucket = fresh_bucket_name("missing")
    async with GCSStorage(bucket, "x/") as store:
        for call in (
            lambda: store.get("chunks/a"),  # 404 too, yet not ObjectNotFoundError
            lambda: store.list_page("chunks/"),
            lambda: store.put("chunks/a", b"a"),
        ):
            with pytest.raises(PermanentStorageError) as caught:
                await call()
            assert not isinstance(caught.value, ObjectNotFoundError)
            assert f"the bucket {bucket!r} does not exist: create it" in str(caught.value)
    assert not bucket_exists(gcs_env, bucket)


async def test_a_put_never_copies_its_chunk(store: GCSStorage) -> None:
    """gcloud-aio and aiohttp would copy a chunk's bytes once per upload (see UncopiedBody):
    tracemalloc sees every Python allocation, so a copy of 8 MiB cannot hide."""
    data = random.Random(7).randbytes(8 * MiB)
    await store.put("chunks/warm-up", b"x")  # the session and its connection exist
    tracemalloc.start()
    try:
        await store.put("chunks/big", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert await store.get("chunks/big") == data
    assert peak < 2 * MiB, f"{peak / MiB:.1f} MiB allocated to send 8 MiB"


async def test_large_put_is_one_simple_upload_through_a_given_session(gcs_bucket: str) -> None:
    """Above 5 MB gcloud-aio would switch to its resumable upload (which retries on its own)."""
    requests: list[tuple[str, str]] = []

    async def on_start(
        session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        requests.append((params.method, params.url.query.get("uploadType", "")))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        store = GCSStorage(gcs_bucket, "", session=session)
        data = random.Random(2).randbytes(6 * MiB + 5)
        await store.put("chunks/big", data)
        assert requests == [("POST", "media")]
        assert await store.get("chunks/big") == data
        await store.aclose()
        assert store.session is session and not session.closed  # the caller's: left open
        await store.put("chunks/after-close", b"still usable")  # a store can be reopened
        await store.aclose()
        assert not session.closed


async def test_own_session_is_created_on_first_use_and_closed(store: GCSStorage) -> None:
    assert store.session is None  # nothing made outside a request
    await store.put("chunks/a", b"a")
    session = store.session
    assert session is not None and not session.closed
    assert session.connector is not None and session.connector.limit == store.max_connections
    await store.aclose()
    assert session.closed and store.session is None


async def test_max_connections_follows_a_given_session_pool(gcs_bucket: str) -> None:
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        store = GCSStorage(gcs_bucket, "", StoreOptions(max_connections=32), session=session)
        assert store.max_connections == 8


async def test_s3_options_are_refused(gcs_env: Server) -> None:
    with pytest.raises(ConfigError, match="STORAGE_EMULATOR_HOST"):
        open_storage("gs://bucket/x", StoreOptions(endpoint_url="http://127.0.0.1:1"))


async def test_the_emulator_needs_no_credentials(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With STORAGE_EMULATOR_HOST no credential file is read and no token is fetched."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    async with GCSStorage(gcs_bucket, "") as store:
        await store.put("chunks/a", b"a")
        assert await store.get("chunks/a") == b"a"


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (5 s at most): aiohttp's pool has no event to wait on."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_cancelled_downloads_release_their_connections(gcs_bucket: str) -> None:
    options = StoreOptions(max_connections=4)
    async with GCSStorage(gcs_bucket, "", options) as store:
        data = random.Random(3).randbytes(8 * MiB)
        await store.put("chunks/big", data)
        gets = [asyncio.create_task(store.get("chunks/big")) for _ in range(12)]
        await eventually(lambda: store.session is not None)
        assert store.session is not None and store.session.connector is not None
        pool = store.session.connector
        await eventually(lambda: len(pool._acquired) == 4)  # 4 in flight, 8 waiting for one
        for task in gets:
            task.cancel()
        await asyncio.gather(*gets, return_exceptions=True)
        missing = [asyncio.create_task(store.get(f"chunks/none-{i}")) for i in range(8)]
        for outcome in await asyncio.gather(*missing, return_exceptions=True):
            assert isinstance(outcome, ObjectNotFoundError)  # error paths release as well
        assert not pool._acquired  # every connection is back in the pool
        async with asyncio.timeout(10):  # a leaked connection would leave the pool short
            results = await asyncio.gather(*(store.get("chunks/big") for _ in range(4)))
        assert all(r == data for r in results)


# The engine on fake-gcs-server.


async def test_engine_round_trips_multi_chunk_files_with_faults(
    gcs_bucket: str, tmp_path: Path, sleep: RecordingSleep
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    rnd = random.Random(4)
    (source / "many.bin").write_bytes(rnd.randbytes(150 * SMALL_CHUNK + 17))  # 151 chunks
    for i in range(49):
        (source / f"small-{i}").write_bytes(rnd.randbytes(100 + i))
    gcs = GCSStorage(gcs_bucket, "e/", StoreOptions(max_connections=4))
    config = fast_config(concurrency=4, max_attempts=10, budget=1000)
    async with FaultyStorage(gcs, rate=0.2, seed=5) as store:
        engine = BackupEngine(store, config, sleep=sleep)
        summary = await engine.backup(source, name="b1")
        assert summary.chunks_uploaded == 200
        await engine.restore("b1", tmp_path / "restored")
        assert sum(store.injected.values()) > 20 and sleep.calls  # faults were retried
        assert gcs.session is not None
        assert not gcs.session.connector._acquired  # type: ignore[union-attr]
    assert_same_tree(source, tmp_path / "restored")
    assert gcs.session is None


async def test_manifest_precondition_settles_a_race_for_one_name(
    gcs_bucket: str, tmp_path: Path
) -> None:
    trees = []
    for i in range(2):
        tree = tmp_path / f"tree{i}"
        tree.mkdir()
        (tree / "file").write_bytes(f"tree {i}".encode() * 5000)
        trees.append(tree)
    async with GCSStorage(gcs_bucket, "") as store:
        engine = BackupEngine(store, fast_config())
        outcomes = await asyncio.gather(
            *(engine.backup(t, name="same") for t in trees), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failed) == 1, outcomes
        # Taken while it ran (NameTakenError, exit 1); ConfigError only if it was taken
        # before it looked, which two jobs started together do not do.
        assert isinstance(failed[0], NameTakenError | ConfigError)
        assert "same" in str(failed[0])
        winner = trees[outcomes.index(next(o for o in outcomes if o is not failed[0]))]
        await engine.restore("same", tmp_path / "restored")
    assert_same_tree(winner, tmp_path / "restored")


# The command line, in subprocesses that inherit STORAGE_EMULATOR_HOST.


def test_cli_backup_list_verify_restore_delete(gcs_bucket: str, tree: Path, tmp_path: Path) -> None:
    url = f"gs://{gcs_bucket}/x"
    backup = cli("backup", tree, url, "--name", "b1", "--chunk-size", "64K")
    assert backup.returncode == EXIT_OK, backup.stderr
    assert backup.stdout == "b1\n"

    listing = cli("list", url, "--json")
    assert listing.returncode == EXIT_OK, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert entry["name"] == "b1" and entry["files"] == 13 and entry["problem"] == ""

    verify = cli("verify", url, "b1", "--deep")
    assert verify.returncode == EXIT_OK, verify.stderr
    assert "verify (deep) of b1: all" in verify.stderr

    restore = cli("restore", url, "b1", tmp_path / "restored")
    assert restore.returncode == EXIT_OK, restore.stderr
    assert_same_tree(tree, tmp_path / "restored")

    again = cli("backup", tree, url, "--name", "b1", "--chunk-size", "64K")
    assert again.returncode == EXIT_USAGE
    assert "b1" in again.stderr and "exists already" in again.stderr
    second = cli("restore", url, "b1", tmp_path / "restored-again")
    assert second.returncode == EXIT_OK, second.stderr
    assert_same_tree(tree, tmp_path / "restored-again")

    delete = cli("delete", url, "b1")
    assert delete.returncode == EXIT_OK, delete.stderr
    assert json.loads(cli("list", url, "--json").stdout) == []


def test_cli_backup_with_injected_faults_restores_identically(
    gcs_bucket: str, tree: Path, tmp_path: Path
) -> None:
    url = f"gs://{gcs_bucket}/faulty"
    faults = ("--inject-faults", "0.2", "--retry-delay", "0.01", "--fault-seed", "3")
    metrics = tmp_path / "m.prom"
    backup = cli(
        "backup", tree, url, "--name", "f", "--chunk-size", "64K", *faults,
        "--metrics-file", metrics, "--pack-threshold", "0",  # many requests: faults are met
    )  # fmt: skip
    assert backup.returncode == EXIT_OK, backup.stderr
    assert retries_in(metrics, "backup") > 0  # the faults were met and retried
    restore = cli("restore", url, "f", tmp_path / "restored", *faults, "--metrics-file", metrics)
    assert restore.returncode == EXIT_OK, restore.stderr
    assert retries_in(metrics, "restore") > 0
    assert_same_tree(tree, tmp_path / "restored")


def test_cli_backup_to_a_missing_bucket_fails_clearly(gcs_env: Server, tree: Path) -> None:
    bucket = fresh_bucket_name("missing")
    result = cli("backup", tree, f"gs://{bucket}/x", "--name", "b1")
    assert result.returncode == EXIT_FAILED, result.stderr
    assert f"the bucket {bucket!r} does not exist: create it" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not bucket_exists(gcs_env, bucket)  # nothing written, nothing created


# Failures fake-gcs-server never produces, from the proxy of tests/proxy.py in front of it.


@pytest.fixture
async def proxy(
    gcs_bucket: str, gcs_server: Server, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FaultProxy]:
    """A proxy in front of fake-gcs-server with ``chunks/a`` (b"abc") in ``gcs_bucket``; each
    test sets its ``rule``; STORAGE_EMULATOR_HOST points at the proxy."""
    async with GCSStorage(gcs_bucket, "") as direct:
        await direct.put("chunks/a", b"abc")
    async with FaultProxy(gcs_server.port, lambda n, method, path: None) as running:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", running.url)
        yield running


@pytest.mark.parametrize(
    ("status", "error", "says"),
    [
        (500, TransientStorageError, "HTTP 500"),
        (503, TransientStorageError, "HTTP 503: Backend Error"),
        (429, TransientStorageError, "HTTP 429"),
        (408, TransientStorageError, "HTTP 408"),
        (401, PermanentStorageError, "GOOGLE_APPLICATION_CREDENTIALS"),
        (403, PermanentStorageError, "storage.objects.create, get, list and delete"),
        (400, PermanentStorageError, "check the bucket name"),
        (412, ObjectExistsError, "exists already"),
    ],
)
async def test_http_errors_map_to_storage_errors_without_retries(
    proxy: FaultProxy, gcs_bucket: str, status: int, error: type[StorageError], says: str
) -> None:
    proxy.rule = lambda n, method, path: gcs_error(status, "Backend Error")
    async with GCSStorage(gcs_bucket, "x/") as store:
        with pytest.raises(error, match=says) as caught:
            await store.put("chunks/big", b"\0" * (6 * MiB))  # above gcloud-aio's 5 MB
        assert type(caught.value) is error
        assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)
        assert len(proxy.requests) == 1  # no resumable upload, no retry of its own
        assert "uploadType=media" in proxy.requests[0][1]
        with pytest.raises(error if status != 412 else PermanentStorageError):
            await store.list_page("chunks/")
        assert len(proxy.requests) == 2


async def test_a_reset_connection_is_not_retried_silently(
    proxy: FaultProxy, gcs_bucket: str
) -> None:
    proxy.rule = lambda n, method, path: None if n == 1 else Fault("reset")
    async with GCSStorage(gcs_bucket, "") as store:
        assert await store.get("chunks/a") == b"abc"
        with pytest.raises(TransientStorageError):
            await store.get("chunks/a")  # on the kept-alive connection, which is reset
    assert len(proxy.requests) == 2  # aiohttp on its own would have sent a third


@pytest.mark.parametrize("where", ["hang", "stall_body"])
async def test_a_hung_response_times_out_as_transient(
    proxy: FaultProxy, gcs_bucket: str, where: str
) -> None:
    proxy.rule = lambda n, method, path: Fault(where)
    async with GCSStorage(gcs_bucket, "", StoreOptions(read_timeout=0.3)) as store:
        async with asyncio.timeout(5):
            with pytest.raises(TransientStorageError, match="Timeout"):
                await store.get("chunks/a")


async def test_a_body_cut_short_is_transient(proxy: FaultProxy, gcs_bucket: str) -> None:
    proxy.rule = lambda n, method, path: Fault("cut_body")
    async with GCSStorage(gcs_bucket, "") as store:
        with pytest.raises(TransientStorageError, match="ClientPayloadError"):
            await store.get("chunks/a")


async def test_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # no http:// either
    async with GCSStorage("bk", "") as store:
        with pytest.raises(TransientStorageError, match="Connect"):
            await store.list_page("chunks/")


def service_account(path: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    info = {
        "type": "service_account",
        "client_email": "backup@test.iam.gserviceaccount.com",
        "private_key": pem.decode(),
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path


async def test_a_refused_service_account_fails_once_and_clearly(
    proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gcloud-aio-auth would try five times, up to a minute apart."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # real GCS, with the proxy as token server
    key_file = service_account(tmp_path / "key.json", f"{proxy.url}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    refused = Fault("status", 401, b'{"error": "invalid_grant"}', "application/json")
    proxy.rule = lambda n, method, path: refused
    async with GCSStorage("bk", "") as store:
        async with asyncio.timeout(5):
            with pytest.raises(PermanentStorageError, match="token server refused") as caught:
                await store.get("chunks/a")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)
    assert proxy.requests == [("POST", "/token")]


async def test_a_missing_credentials_file_is_a_clear_permanent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", os.fspath(tmp_path / "absent.json"))
    async with GCSStorage("bk", "") as store:
        with pytest.raises(PermanentStorageError, match="cannot use the Google credentials"):
            await store.put("chunks/a", b"a")
