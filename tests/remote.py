"""One store under test, of any kind, as the chaos tests see it: a URL for the CLI, a store
object (through a fault proxy if one is given), and direct access to its keys past our code."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from asyncbackup import LocalStorage, Storage, StoreOptions
from asyncbackup.storage.gcs import GCSStorage
from asyncbackup.storage.s3 import S3Storage
from tests.proxy import GCS_THROTTLES, S3_THROTTLES, Fault, FaultProxy
from tests.servers import Server


@dataclass
class StoreUnderTest:
    """A local directory, or a fresh bucket on a real server (moto or fake-gcs-server)."""

    kind: str  # "local", "s3" or "gcs"
    bucket: str  # the bucket, or the local store's root directory
    monkeypatch: pytest.MonkeyPatch
    server: Server | None = None

    @property
    def throttles(self) -> tuple[Fault, ...]:
        """The store's own 503, 500 and 429 answers, with its own error bodies."""
        return S3_THROTTLES if self.kind == "s3" else GCS_THROTTLES

    @property
    def upload_method(self) -> str:
        return "PUT" if self.kind == "s3" else "POST"

    def upload_of(self, key: str) -> str:
        """What the path of an upload of ``key`` contains. GCS names a chunk in the query,
        and the MANIFEST (a multipart upload, for its precondition) only in the body."""
        if self.kind == "gcs" and key.endswith("MANIFEST"):
            return "uploadType=multipart"
        return key

    def download_of(self, key: str) -> str:
        """What the path of a download of ``key`` contains: GCS quotes the name whole."""
        return key if self.kind == "s3" else key.replace("/", "%2F")

    def url(self, prefix: str) -> str:
        if self.kind == "local":
            return str(Path(self.bucket) / prefix)
        return f"{'s3' if self.kind == 's3' else 'gs'}://{self.bucket}/{prefix}"

    def store(
        self, proxy: FaultProxy | None = None, prefix: str = "c/", connections: int = 8
    ) -> Storage:
        """The store at ``prefix``, through ``proxy`` when one is given."""
        if self.kind == "local":
            return LocalStorage(Path(self.bucket) / prefix)
        assert self.server is not None
        endpoint = proxy.url if proxy is not None else self.server.url
        if self.kind == "s3":
            options = StoreOptions(endpoint_url=endpoint, max_connections=connections)
            return S3Storage(self.bucket, prefix, options)
        with self.monkeypatch.context() as env:  # the store reads the emulator's address once
            env.setenv("STORAGE_EMULATOR_HOST", endpoint)
            return GCSStorage(self.bucket, prefix, StoreOptions(max_connections=connections))

    def cli_env(self, proxy: FaultProxy | None = None) -> dict[str, str]:
        """The environment of a CLI run, reaching the server through ``proxy`` if given."""
        if proxy is None or self.kind == "local":
            return dict(os.environ)
        name = "AWS_ENDPOINT_URL" if self.kind == "s3" else "STORAGE_EMULATOR_HOST"
        return {**os.environ, name: proxy.url}

    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (from the store's root), read straight from the store."""
        keys: list[str] = []
        token: str | None = None
        async with self.store(prefix="") as direct:
            while True:
                page, token = await direct.list_page(prefix, token)
                keys.extend(page)
                if token is None:
                    return sorted(keys)

    async def read(self, key: str) -> bytes:
        async with self.store(prefix="") as direct:
            return await direct.get(key)

    async def delete(self, key: str) -> None:
        """Remove ``key``, as a lifecycle rule or a hand would."""
        async with self.store(prefix="") as direct:
            await direct.delete(key)

    async def write(self, key: str, data: bytes) -> None:
        """Replace what ``key`` holds, as an attacker or a failing disk would."""
        async with self.store(prefix="") as direct:
            await direct.put(key, data)
