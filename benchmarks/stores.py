"""The servers of the suite, a fresh one per run, and what they hold afterwards.

S3 is ``rclone serve s3`` over its memory backend (DESIGN.md section 8: about 3 times faster than
moto), with signature checking on; GCS is fake-gcs-server. Each run gets a server process of its
own, so no run finds another's objects (asyncbackup would skip chunks already stored), memory is
freed between runs, and the server's CPU seconds are that run's alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from asyncbackup.errors import IntegrityError
from asyncbackup.layout import PACKS, chunk_key
from asyncbackup.packs import parse_pack
from benchmarks.contenders import KEY, SECRET, TOOLS
from tests.servers import READY_TIMEOUT, Server, free_port, http, start_fake_gcs

BUCKET = "bench"
Listing = dict[str, tuple[int, str]]  # key -> (size, MD5 hex), as the server reports them


def start_rclone_s3(root: str = ":memory:") -> Server:
    """``rclone serve s3`` on 127.0.0.1, in RAM, requiring the signature of KEY and SECRET.

    Ready when its port accepts a connection: with auth on, every unsigned request is refused,
    so ``tests.servers.start``'s wait for a 200 does not apply.
    """
    port = free_port()
    command = [
        str(TOOLS / "bin" / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
        "--auth-key", f"{KEY},{SECRET}", root,
    ]  # fmt: skip
    log = tempfile.NamedTemporaryFile(prefix="rclone-s3-", suffix=".log", delete=False)  # noqa: SIM115
    env = {**os.environ, "RCLONE_CONFIG": os.devnull}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    server = Server("rclone serve s3", port, process, Path(log.name))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)  # before any event loop exists
    output = server.log_path.read_text(errors="replace")
    server.stop()
    raise RuntimeError(f"rclone serve s3 did not start on port {port}:\n{output}")


def start_server(store: str) -> Server:
    """A fresh, empty server holding one empty bucket, ``BUCKET``."""
    if store == "gcs":
        gcs = start_fake_gcs()
        body = json.dumps({"name": BUCKET}).encode()
        http("POST", f"{gcs.url}/storage/v1/b?project=bench", body)
        return gcs
    s3 = start_rclone_s3()
    try:
        asyncio.run(_create_bucket(s3.url))
    except BaseException:
        s3.stop()
        raise
    return s3


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    config = AioConfig(
        s3={"addressing_style": "path"},
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 3},
    )
    return get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY,
        aws_secret_access_key=SECRET, config=config,
    )  # fmt: skip


async def _create_bucket(endpoint: str) -> None:
    async with _s3_client(endpoint) as s3:
        await s3.create_bucket(Bucket=BUCKET)


async def _get_s3(endpoint: str, key: str) -> bytes:
    async with _s3_client(endpoint) as s3:
        answer = await s3.get_object(Bucket=BUCKET, Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
            return data


async def _list_s3(endpoint: str, prefix: str) -> Listing:
    found: Listing = {}
    async with _s3_client(endpoint) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(prefix)
                found[key] = (item["Size"], item["ETag"].strip('"'))
    return found


def _list_gcs(endpoint: str, prefix: str) -> Listing:
    found: Listing = {}
    token = ""
    while True:
        url = f"{endpoint}/storage/v1/b/{BUCKET}/o?prefix={prefix}&maxResults=1000{token}"
        page = json.loads(http("GET", url, timeout=60))
        for item in page.get("items", []):
            md5 = base64.b64decode(item.get("md5Hash", "")).hex()
            found[item["name"].removeprefix(prefix)] = (int(item["size"]), md5)
        if "nextPageToken" not in page:
            return found
        token = f"&pageToken={page['nextPageToken']}"


def listing_local(root: Path) -> Listing:
    """Every file under ``root`` (a local store), with its size and MD5, as a server lists it;
    packs unpacked (``unpacked``)."""
    found = {
        path.relative_to(root).as_posix(): (len(data := path.read_bytes()),
                                            hashlib.md5(data, usedforsecurity=False).hexdigest())
        for path in root.rglob("*") if path.is_file()
    }  # fmt: skip
    return unpacked(found, lambda key: (root / key).read_bytes())


def listing(store: str, server: Server, prefix: str) -> Listing:
    """Every object under ``prefix`` (keys relative to it), straight from the server; packs
    unpacked (``unpacked``)."""
    if store == "gcs":
        found = _list_gcs(server.url, prefix)

        def read(key: str) -> bytes:
            name = urllib.parse.quote(prefix + key, safe="")
            return http("GET", f"{server.url}/storage/v1/b/{BUCKET}/o/{name}?alt=media", timeout=60)

        return unpacked(found, read)
    found = asyncio.run(_list_s3(server.url, prefix))
    return unpacked(found, lambda key: asyncio.run(_get_s3(server.url, prefix + key)))


def unpacked(found: Listing, read: Callable[[str], bytes]) -> Listing:
    """``found`` with each pack (``packs/<sha256>``, asyncbackup's small chunks in one object)
    read back and replaced by the chunks it holds, as if each were an object of its own
    (``chunks/<sha256>``: its size and MD5), so that a packed backup is checked chunk by chunk
    against the same expectations as one object per chunk. A pack whose bytes do not hash to
    its key, or whose trailer does not parse, is left in place: reported as unexpected."""
    out = dict(found)
    for key in [k for k in found if k.startswith(PACKS)]:
        data = read(key)
        if hashlib.sha256(data).hexdigest() != key.removeprefix(PACKS):
            continue
        try:
            chunks = parse_pack(data, where=key)
        except IntegrityError:
            continue
        del out[key]
        for chunk in chunks:
            piece = data[chunk.offset : chunk.offset + chunk.length]
            out[chunk_key(chunk.ref)] = (
                len(piece),
                hashlib.md5(piece, usedforsecurity=False).hexdigest(),
            )
    return out


def problems(found: Listing, expected: Listing, *, also: frozenset[str] = frozenset()) -> list[str]:
    """What is missing, short, corrupt or unexpected in ``found`` (which must also hold the keys
    in ``also``, of any content); empty when all is intact."""
    bad = [f"missing {key}" for key in [*expected, *also] if key not in found]
    bad += [
        f"{key}: {found[key]} instead of {want}"
        for key, want in expected.items()
        if key in found and found[key] != want
    ]
    bad += [f"unexpected {key}" for key in found if key not in expected and key not in also]
    return bad
