"""A store in a Google Cloud Storage bucket, on gcloud-aio-storage.

One aiohttp session per store (or the caller's), and no retry anywhere below us: the engine's
jittered backoff is the only retry layer, so every retry is counted and logged. Three places in
the stack would otherwise retry on their own, and are turned off here:

- gcloud-aio-storage switches uploads above 5 MB to its resumable protocol, whose PUT it retries
  5 times with unjittered 1, 2, 4, 8 s sleeps: every put here is a single request (forced simple).
- gcloud-aio-auth fetches access tokens under tenacity (5 tries, random sleeps of up to 60 s),
  so a machine without credentials waits on the metadata server before it fails: ``_Token``
  tries once, and a missing metadata server is reported as "no credentials" at once.
- aiohttp resends a GET or DELETE once when a kept-alive connection drops: off on our session.

Memory: a chunk's put sends the caller's bytes without a copy (``UncopiedBody``; the
create-only MANIFEST put copies it once into a multipart body); a get reads the body in pieces
of ``READ_PIECE`` and briefly holds two copies of one object. ``upload_from_filename``, ``download``
and ``download_to_filename`` are never used: they hold whole objects.

gcloud-aio's ``timeout=`` is a total for the request *and* its body, and replaces the session's
timeouts: 10 s by default, too short for an 8 MiB chunk on a slow link. We pass connect and read
timeouts instead; the engine's per-attempt timeout bounds the whole request.

``STORAGE_EMULATOR_HOST`` selects an emulator (fake-gcs-server): requests then carry no
credentials and no credential file is read. Every SDK exception becomes a ``StorageError`` in
``gcs_errors.storage_error``, the one place that decides what a retry can fix.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiohttp
from gcloud.aio.auth import Token
from gcloud.aio.auth.token import GCE_METADATA_BASE
from gcloud.aio.storage import Storage as GCSClient

from asyncbackup.errors import ConfigError, ObjectNotFoundError, StorageError, TransientStorageError
from asyncbackup.storage.base import ObjectInfo, ObjectPage, Storage, within_piece_size
from asyncbackup.storage.gcs_errors import CREDENTIAL_ERRORS, REQUEST_ERRORS, About, storage_error
from asyncbackup.storage.options import StoreOptions
from asyncbackup.storage.uncopied import UncopiedBody
from asyncbackup.threads import to_thread

READ_PIECE = 1024 * 1024
"""Bodies are read in pieces of this size: a stalled body is noticed between pieces."""

PAGE_SIZE = 1000
"""Names per listing page: GCS's own maximum."""

SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
"""Objects are created, read, listed and deleted: no ACL or bucket changes."""

CONTENT_TYPE = "application/octet-stream"

# gcloud-aio-auth wraps this in tenacity's @retry; the function underneath tries once.
_acquire_once: Callable[[Token, int], Awaitable[None]] = inspect.unwrap(Token.acquire_access_token)


class _Token(Token):
    """A Token that fetches once per call: our backoff decides whether to try again."""

    # The base's attribute is tenacity's wrapper type; gcloud-aio chose the parameter name.
    async def acquire_access_token(self, timeout: int = 10) -> None:  # type: ignore[override]  # noqa: ASYNC109
        await _acquire_once(self, timeout)


class GCSStorage(Storage):
    """Objects in ``bucket`` under ``prefix`` (empty, or ending in '/').

    The session and client are created on first use, inside the running loop, and closed by
    ``aclose``. A ``session`` passed in (an embedding service's) is used as it is and left open;
    its connector's limit caps ``max_connections``. S3-only options (endpoint, region, storage
    class, encryption) are refused here; ``addressing_style`` is ignored.

    Raises:
        ConfigError: S3-only options are set.
    """

    streams = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: StoreOptions | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.options = options if options is not None else StoreOptions()
        if self.options.s3_only:
            raise ConfigError(
                f"gs://{bucket}: {', '.join(self.options.s3_only)} apply to S3 only; point a "
                "gs:// store at an emulator with STORAGE_EMULATOR_HOST=http://HOST:PORT"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"gs://{bucket}/{prefix}"
        self.page_size = page_size
        self.max_connections = self.options.max_connections
        if session is not None and session.connector is not None:
            pool = session.connector
            limits = [n for n in (pool.limit, pool.limit_per_host) if n > 0]
            self.max_connections = min([self.max_connections, *limits])
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        if emulator and not emulator.startswith(("http://", "https://")):
            emulator = f"http://{emulator}"  # gcloud-aio would add it too, with a warning
        self.emulator = emulator or None
        self._given_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._client: GCSClient | None = None
        self._client_lock = asyncio.Lock()
        # gcloud-aio types timeout= as an int total; its session takes a ClientTimeout as well.
        self._timeout: Any = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.options.connect_timeout,
            sock_read=self.options.read_timeout,
        )

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session in use: the caller's, or ours once the first request made it."""
        return self._given_session if self._given_session is not None else self._own_session

    async def put(
        self, key: str, data: bytes, *, overwrite: bool = True, digest: str | None = None
    ) -> None:
        # ``digest`` is a SHA-256, which GCS cannot check; restore re-hashes every chunk.
        client = await self._gcs()
        if not isinstance(data, bytes):
            data = bytes(data)  # gcloud-aio uploads bytes, str or file objects only
        async with self._mapped(key, about="bucket"):
            if overwrite:
                await client.upload(
                    self.bucket,
                    self.prefix + key,
                    UncopiedBody(data),
                    content_type=CONTENT_TYPE,
                    force_resumable_upload=False,
                    timeout=self._timeout,
                )
                return
            # Create-only (the MANIFEST): ifGenerationMatch=0 makes GCS refuse, with 412, to
            # replace an object that exists. Sent as a multipart upload (gcloud-aio picks it when
            # there is metadata): the fake-gcs-server we test against ignores it on a
            # media upload (fixed by fsouza/fake-gcs-server#2308), and the MANIFEST is small
            # enough for multipart's copy of it.
            await client.upload(
                self.bucket,
                self.prefix + key,
                data,
                content_type=CONTENT_TYPE,
                metadata={"contentType": CONTENT_TYPE},
                parameters={"ifGenerationMatch": "0"},
                force_resumable_upload=False,
                timeout=self._timeout,
            )

    async def get(self, key: str) -> bytes:
        return await self._download(key, None)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self._download(key, {"Range": f"bytes={start}-{start + length - 1}"})

    async def stream(self, key: str) -> AsyncGenerator[bytes, None]:
        client = await self._gcs()
        try:
            async with self._mapped(key, about="object"):
                stream = await client.download_stream(
                    self.bucket, self.prefix + key, timeout=self._timeout
                )
                async with stream as response:  # the connection is released on every way out
                    # As the connection delivered it, aiohttp's buffers one by one: no joins.
                    async for received, _ in response.content.iter_chunks():
                        for piece in within_piece_size(received):
                            yield piece
        except ObjectNotFoundError:
            await self._check_bucket()  # GCS says 404 for a missing bucket as well
            raise

    async def _download(self, key: str, headers: dict[str, str] | None) -> bytes:
        client = await self._gcs()
        try:
            async with self._mapped(key, about="object"):
                stream = await client.download_stream(
                    self.bucket, self.prefix + key, headers=headers, timeout=self._timeout
                )
                # The response holds a pooled connection until it is read or released: the
                # context manager releases it on every way out, cancellation included.
                async with stream as response:
                    body = bytearray()
                    while piece := await response.content.read(READ_PIECE):
                        body += piece
        except ObjectNotFoundError:
            await self._check_bucket()  # GCS says 404 for a missing bucket as well
            raise
        return bytes(body)

    async def list_objects(self, prefix: str, token: str | None = None) -> ObjectPage:
        client = await self._gcs()
        # One page per call, resumed from GCS's pageToken, so a failure retries one page
        # instead of restarting a listing of a million chunks.
        params = {
            "prefix": self.prefix + prefix,
            "maxResults": str(self.page_size),
            "fields": "items(name,size,updated),nextPageToken",
        }
        if token is not None:
            params["pageToken"] = token
        async with self._mapped(prefix, about="bucket"):
            page = await client.list_objects(self.bucket, params=params, timeout=self._timeout)
            items = page.get("items", [])
            next_token = page.get("nextPageToken")
        start = len(self.prefix)
        objects: list[ObjectInfo] = []
        for item in items:
            name = str(item["name"])
            # Skip the "folder" placeholders the console creates (names ending in '/').
            if not name.startswith(self.prefix) or name.endswith("/"):
                continue
            try:
                size = int(item["size"])  # GCS sends a 64-bit size as a string
                modified = datetime.fromisoformat(str(item["updated"])).timestamp()
            except (KeyError, ValueError) as exc:
                raise TransientStorageError(
                    f"{self.url}{name}: the listing gave no usable size or time ({exc!r})"
                ) from exc
            objects.append(ObjectInfo(name[start:], size, modified))
        return objects, str(next_token) if next_token else None

    async def delete(self, key: str) -> None:
        client = await self._gcs()
        async with self._mapped(key, about="object"):
            try:
                await client.delete(self.bucket, self.prefix + key, timeout=self._timeout)
            except aiohttp.ClientResponseError as exc:
                if exc.status != 404:  # gone already: deleting is idempotent
                    raise

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.token.acquiring is not None:
            client.token.acquiring.cancel()  # a background token refresh, if one is running
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()

    async def _gcs(self) -> GCSClient:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await self._open_client()
        return self._client

    async def _open_client(self) -> GCSClient:
        # gcloud-aio's hints name requests.Session (of its sync twin); it takes aiohttp's here.
        session: Any = self._session()
        if self.emulator is not None:
            # No credentials for an emulator (gcloud-aio sends none): an empty service file
            # keeps the Token from reading the user's credential files.
            token = _Token(service_file=io.StringIO("{}"), scopes=SCOPES, session=session)
            return GCSClient(session=session, token=token, api_root=self.emulator, api_is_dev=True)
        async with self._mapped("", about="credentials"):
            # Token() reads the credential file: a blocking read, so in a thread.
            token = await to_thread(_Token, scopes=SCOPES, session=session)
        # Fetch the first token here, once, rather than in many first requests at a time.
        from_metadata = token.token_uri.startswith(GCE_METADATA_BASE)
        async with self._mapped("", about="metadata" if from_metadata else "credentials"):
            await token.get()
        return GCSClient(session=session, token=token)

    def _session(self) -> aiohttp.ClientSession:
        if self._given_session is not None:
            return self._given_session
        if self._own_session is None:
            self._own_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.options.max_connections),
                timeout=self._timeout,
            )
            # aiohttp resends an idempotent request once on a dropped kept-alive connection:
            # a retry we would neither count nor back off. (Private; no public switch.)
            if hasattr(self._own_session, "_retry_connection"):
                self._own_session._retry_connection = False
        return self._own_session

    async def _check_bucket(self) -> None:
        """Raise the missing-bucket error if the bucket is gone; any other answer says nothing."""
        client = await self._gcs()
        try:
            await client.get_bucket_metadata(self.bucket, timeout=self._timeout)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                raise storage_error(exc, self.url, "", about="bucket") from exc
        except (aiohttp.ClientError, TimeoutError):
            pass  # no storage.buckets.get, or a hiccup: the object is still what is missing

    @asynccontextmanager
    async def _mapped(self, key: str, *, about: About) -> AsyncIterator[None]:
        caught = REQUEST_ERRORS if about in ("object", "bucket") else CREDENTIAL_ERRORS
        try:
            yield
        except StorageError:
            raise
        except caught as exc:
            raise storage_error(exc, self.url, key, about=about) from exc
